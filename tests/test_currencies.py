"""Amounts in currencies whose smallest unit is not a cent (Stripe's zero-decimal and
three-decimal currencies, https://docs.stripe.com/currencies#zero-decimal): shown to people
in their own unit."""

from __future__ import annotations

import pytest

from collab_billing.billing.errors import overdue_invoice
from collab_billing.billing.money import decimals, format_amount


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (2000, "usd", "20.00 USD"),
        (1999, "eur", "19.99 EUR"),
        (3000, "jpy", "3000 JPY"),
        (50000, "krw", "50000 KRW"),
        (6150, "kwd", "6.150 KWD"),
        (6274, "bhd", "6.274 BHD"),
        (0, "jpy", "0 JPY"),
        (2**63 - 1, "usd", "92233720368547758.07 USD"),  # no float on the way
    ],
)
def test_amounts_are_shown_in_their_currencys_unit(amount: int, currency: str, shown: str) -> None:
    assert format_amount(amount, currency) == shown
    assert format_amount(amount, currency.upper()) == shown


def test_decimals() -> None:
    assert [decimals(c) for c in ("usd", "JPY", "kwd", "isk", "huf")] == [2, 0, 3, 2, 2]


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [(3000, "jpy", "(3000 JPY)"), (6274, "kwd", "(6.274 KWD)"), (2000, "usd", "(20.00 USD)")],
)
def test_the_overdue_invoice_409_names_the_amount_owed_in_its_currency(
    amount: int, currency: str, shown: str
) -> None:
    """`POST /billing/subscriptions` while an invoice is overdue: the message said a ¥3000
    invoice was `30.00 JPY`, and a 6.274 KWD one `62.74 KWD`."""
    refused = overdue_invoice(7, "in_1", amount, currency, "https://pay.example/in_1")
    assert refused.status_code == 409
    assert shown in refused.message
    assert refused.extra["invoice"] == {
        "id": "in_1",
        "amount_remaining": amount,
        "currency": currency,
        "hosted_invoice_url": "https://pay.example/in_1",
    }
