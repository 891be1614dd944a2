"""Amounts shown on the emulator's hosted pages, as Stripe's pages show them: Stripe's integer
amounts count the currency's smallest unit, a cent for most currencies, a whole unit for the
zero-decimal ones (JPY, KRW, ...), a thousandth for the three-decimal ones (KWD, BHD, ...):
https://docs.stripe.com/currencies#zero-decimal. (The service keeps its own copy,
`collab_billing.billing.money`: the emulator is a separate package.)"""

from __future__ import annotations

from decimal import Decimal

ZERO_DECIMAL = frozenset(
    {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
        "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    }
)  # fmt: skip
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def format_amount(amount: int, currency: str) -> str:
    """`3000 JPY`, `20.00 USD`, `6.150 KWD`."""
    code = currency.lower()
    places = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    return f"{Decimal(amount).scaleb(-places):.{places}f} {currency.upper()}"
