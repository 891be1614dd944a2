"""Amounts as Stripe gives them: integers in the currency's smallest unit.

That unit is a cent for most currencies, but Stripe's zero-decimal currencies (JPY, KRW, ...)
count whole units and its three-decimal ones (BHD, JOD, KWD, OMR, TND) count thousandths
(https://docs.stripe.com/currencies#zero-decimal, #three-decimal). An amount shown to a person
is divided by the unit of its own currency: Stripe's 3000 JPY is ¥3000, not 30.00.
"""

from __future__ import annotations

from decimal import Decimal

ZERO_DECIMAL = frozenset(
    {
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
        "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
    }
)  # fmt: skip
THREE_DECIMAL = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})


def decimals(currency: str) -> int:
    """How many decimal places an amount of `currency` counts in Stripe's API."""
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def format_amount(amount: int, currency: str) -> str:
    """`amount` (Stripe's integer, in the smallest unit) as a person reads it: `30.00 USD`,
    `3000 JPY`, `6.150 KWD`. Exact (no float) for any amount."""
    places = decimals(currency)
    return f"{Decimal(amount).scaleb(-places):.{places}f} {currency.upper()}"
