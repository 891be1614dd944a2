"""The hosted Checkout and invoice pages show an amount in its currency's unit: Stripe's
amounts count the smallest unit, a whole yen for JPY (zero-decimal), a thousandth for KWD
(three-decimal), a cent for USD (https://docs.stripe.com/currencies#zero-decimal)."""

from __future__ import annotations

import pytest
import stripe

from tests.emulator.conftest import Control


def _price(client: stripe.StripeClient, currency: str, amount: int) -> str:
    params = {
        "currency": currency,
        "unit_amount": amount,
        "recurring": {"interval": "month"},
        "product_data": {"name": f"Plan in {currency}"},
    }
    return str(client.v1.prices.create(params=params).id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("currency", "amount", "shown"),
    [("jpy", 3000, "3000 JPY"), ("kwd", 6150, "6.150 KWD"), ("usd", 2000, "20.00 USD")],
)
def test_checkout_and_invoice_pages_show_the_amount_in_its_currencys_unit(
    client: stripe.StripeClient, ctl: Control, currency: str, amount: int, shown: str
) -> None:
    price = _price(client, currency, amount)
    customer = client.v1.customers.create(params={"email": "t@example.com"})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": "https://example.com/ok",
        }
    )
    page = ctl.http.get(f"/_emulator/pages/checkout/{session.id}")
    assert f"Subscribe: {shown} per period." in page.text

    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price}],
            "payment_behavior": "default_incomplete",
        }
    )
    invoice = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert (invoice.status, invoice.amount_remaining) == ("open", amount)
    page = ctl.http.get(f"/_emulator/pages/invoices/{invoice.id}")
    assert f"Amount due: {shown}" in page.text
