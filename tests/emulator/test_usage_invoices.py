"""Metered subscription items and the usage lines of renewal invoices, through the official SDK.

A metered item has no quantity (Stripe refuses one, in Checkout and in the Subscriptions API);
at each renewal the invoice bills, per metered item, the meter's aggregated usage over the
period that ended, x the price's `unit_amount_decimal`, rounded to the nearest cent. Every
response of these tests is checked against Stripe's OpenAPI schema at the end."""

from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from tests.emulator.conftest import Control, past_period_end, recurring_price
from tests.emulator.test_meters import _check_recorded_against_spec, make_meter

DAY = 86_400


def metered_price(client: stripe.StripeClient, meter: str, unit_amount_decimal: str) -> str:
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": unit_amount_decimal,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
            "product_data": {"name": "Tokens"},
        }
    )
    return price.id


def report(client: stripe.StripeClient, event_name: str, customer: str, value: str = "1") -> None:
    client.v1.billing.meter_events.create(
        params={
            "event_name": event_name,
            "payload": {"stripe_customer_id": customer, "value": value},
        }
    )


def advance(ctl: Control, days: float) -> None:
    ctl("POST", "clock/advance", {"seconds": int(days * DAY)})


def subscribe_with_card(client: stripe.StripeClient, items: list[dict[str, object]]) -> str:
    """A subscription made through the API, paid by a visa card (as Checkout would do)."""
    customer = client.v1.customers.create(params={"email": "m@example.com"}).id
    card = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    sub = client.v1.subscriptions.create(
        params={"customer": customer, "items": items, "default_payment_method": card.id}  # type: ignore[typeddict-item]
    )
    return sub.id


def renewal(client: stripe.StripeClient, sub_id: str) -> stripe.Invoice:
    invoice = client.v1.invoices.list(params={"subscription": sub_id, "limit": 1}).data[0]
    assert invoice.billing_reason == "subscription_cycle"
    return invoice


def line_for(invoice: stripe.Invoice, price_id: str) -> stripe.InvoiceLineItem:
    def price_of(line: stripe.InvoiceLineItem) -> str | None:
        details = line.pricing.price_details if line.pricing else None
        return details.price if details else None

    [line] = [line for line in invoice.lines.data if price_of(line) == price_id]
    return line


def test_metered_items_take_no_quantity(client: stripe.StripeClient, ctl: Control) -> None:
    ctl.emulator.app.state.recorded.take()
    price = metered_price(client, make_meter(client), "0.5")
    customer = client.v1.customers.create().id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": price, "quantity": 2}]}
        )
    assert refused.value.user_message == "You cannot set the quantity for metered plans."
    assert refused.value.param == "items[0][quantity]"
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "line_items": [{"price": price, "quantity": 1}],
                "success_url": "https://example.com/ok",
            }
        )
    assert refused.value.user_message == (
        "Quantity should not be specified where usage_type is `metered`. "
        "Remove quantity from `line_items[0]`."
    )
    assert client.v1.subscriptions.list(params={"customer": customer}).data == []

    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": price}],
            "success_url": "https://example.com/ok",
        }
    )
    [line] = client.v1.checkout.sessions.line_items.list(session.id).data
    assert (line.quantity, line.amount_total) == (None, 0)
    sub = client.v1.subscriptions.create(params={"customer": customer, "items": [{"price": price}]})
    [item] = sub["items"].data
    assert "quantity" not in item and item.price.recurring
    assert item.price.recurring.usage_type == "metered"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "quantity": 3}]})
    _check_recorded_against_spec(ctl)


def test_renewal_bills_summed_usage_in_arrears(client: stripe.StripeClient, ctl: Control) -> None:
    ctl.emulator.app.state.recorded.take()
    licensed = recurring_price(client, 1500).id
    metered = metered_price(client, make_meter(client), "0.25")
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": licensed, "quantity": 2}, {"price": metered}],
            "success_url": "https://example.com/ok",
        }
    )
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    customer, sub_id = done["customer"], done["subscription"]
    first = client.v1.invoices.list(params={"subscription": sub_id}).data[0]
    assert first.amount_due == 3000  # the metered item: nothing used yet
    assert (line_for(first, metered).quantity, line_for(first, metered).amount) == (0, 0)
    sub = client.v1.subscriptions.retrieve(sub_id)
    period = (sub["items"].data[0].current_period_start, sub["items"].data[0].current_period_end)

    report(client, "tokens", customer, "400")
    advance(ctl, 10)
    report(client, "tokens", customer, "600.5")
    report(client, "tokens", customer, "1.5")
    past_period_end(ctl, client, sub_id)  # the renewal

    invoice = renewal(client, sub_id)
    usage = line_for(invoice, metered)
    assert (usage.quantity, usage.quantity_decimal) == (1002, Decimal(1002))
    assert usage.amount == 251  # 1002 x 0.25 = 250.5 cents, rounded half up
    assert (usage.period.start, usage.period.end) == period  # in arrears
    assert usage.pricing and usage.pricing.unit_amount_decimal == Decimal("0.25")
    assert usage.parent and usage.parent.subscription_item_details
    assert usage.parent.subscription_item_details.subscription_item == sub["items"].data[1].id
    seats = line_for(invoice, licensed)
    assert (seats.amount, seats.period.start) == (3000, period[1])  # in advance
    assert (invoice.amount_due, invoice.amount_paid, invoice.status) == (3251, 3251, "paid")

    report(client, "tokens", customer, "8")  # the new period's usage: the next invoice
    past_period_end(ctl, client, sub_id)
    usage = line_for(renewal(client, sub_id), metered)
    assert (usage.quantity, usage.amount, usage.period.start) == (8, 2, period[1])
    _check_recorded_against_spec(ctl)


def test_count_and_last_aggregations(client: stripe.StripeClient, ctl: Control) -> None:
    ctl.emulator.app.state.recorded.take()
    calls = metered_price(
        client, make_meter(client, "calls", default_aggregation={"formula": "count"}), "5"
    )
    seats = metered_price(
        client, make_meter(client, "seats", default_aggregation={"formula": "last"}), "100"
    )
    sub_id = subscribe_with_card(client, [{"price": calls}, {"price": seats}])
    customer = client.v1.subscriptions.retrieve(sub_id).customer
    assert isinstance(customer, str)
    for value in ("7", "1", "9"):
        report(client, "calls", customer, value)
    report(client, "seats", customer, "7")
    advance(ctl, 1)
    report(client, "seats", customer, "4")  # the last value of the period counts
    past_period_end(ctl, client, sub_id)

    invoice = renewal(client, sub_id)
    assert (line_for(invoice, calls).quantity, line_for(invoice, calls).amount) == (3, 15)
    assert (line_for(invoice, seats).quantity, line_for(invoice, seats).amount) == (4, 400)
    assert (invoice.amount_due, invoice.status) == (415, "paid")
    _check_recorded_against_spec(ctl)


def test_added_metered_item_without_usage_bills_a_zero_line(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl.emulator.app.state.recorded.take()
    licensed = recurring_price(client, 900).id
    metered = metered_price(client, make_meter(client), "3")
    sub_id = subscribe_with_card(client, [{"price": licensed}])
    [item] = client.v1.subscriptions.retrieve(sub_id)["items"].data
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.update(
            sub_id, {"items": [{"id": item.id}, {"price": metered, "quantity": 1}]}
        )
    assert refused.value.param == "items[1][quantity]"
    updated = client.v1.subscriptions.update(
        sub_id, {"items": [{"id": item.id}, {"price": metered}]}
    )
    assert [i.price.id for i in updated["items"].data] == [licensed, metered]
    assert updated["items"].data[0].id == item.id
    past_period_end(ctl, client, sub_id)

    invoice = renewal(client, sub_id)
    zero = line_for(invoice, metered)
    assert (zero.quantity, zero.quantity_decimal, zero.amount) == (0, Decimal(0), 0)
    assert (invoice.amount_due, invoice.status) == (900, "paid")
    _check_recorded_against_spec(ctl)


def test_cancellation_bills_the_usage_not_yet_invoiced(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """At a scheduled cancellation, and with `invoice_now`, a final invoice bills the usage
    so far; a plain cancellation discards it (as Stripe does)."""
    ctl.emulator.app.state.recorded.take()
    metered = metered_price(client, make_meter(client), "2")
    at_period_end, now, plain = (subscribe_with_card(client, [{"price": metered}]) for _ in "abc")
    for sub_id, value in ((at_period_end, "10"), (now, "20"), (plain, "40")):
        customer = client.v1.subscriptions.retrieve(sub_id).customer
        assert isinstance(customer, str)
        report(client, "tokens", customer, value)
    client.v1.subscriptions.update(at_period_end, {"cancel_at_period_end": True})
    advance(ctl, 5)

    client.v1.subscriptions.cancel(now, {"invoice_now": True})
    client.v1.subscriptions.cancel(plain)
    [final, first] = client.v1.invoices.list(params={"subscription": now}).data
    assert (first.billing_reason, first.amount_due) == ("subscription_create", 0)
    assert (final.amount_due, final.status, final.billing_reason) == (
        40,
        "paid",
        "subscription_update",
    )
    assert final.lines.data[0].period.end == final.created
    [first] = client.v1.invoices.list(params={"subscription": plain}).data
    assert first.billing_reason == "subscription_create"

    past_period_end(ctl, client, at_period_end)
    assert client.v1.subscriptions.retrieve(at_period_end).status == "canceled"
    [last, _] = client.v1.invoices.list(params={"subscription": at_period_end}).data
    assert (last.amount_due, last.status, last.lines.data[0].quantity) == (20, "paid", 10)
    _check_recorded_against_spec(ctl)
