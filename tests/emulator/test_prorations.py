"""Prorations through the SDK (https://docs.stripe.com/billing/subscriptions/prorations): a
price or quantity change mid-period of a licensed item credits the unused time on the old and
charges the remaining time on the new, to the second; pending until the next invoice
(`create_prorations`, the default and the portal's), invoiced and charged at once
(`always_invoice`), or not at all (`none`)."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe

from tests.emulator.conftest import CARD, Control, recurring_price
from tests.emulator.test_invoices import decline_future_charges

DAY = 86_400


def _prorated(amount: int, sub: Any, at: int) -> int:
    item = sub["items"].data[0]
    start, end = item.current_period_start, item.current_period_end
    exact = Decimal(amount) * Decimal(end - at) / Decimal(end - start)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def subscribe(client: stripe.StripeClient, ctl: Control, quantity: int = 1) -> tuple[str, str]:
    """A 15.00/month subscription of a customer on a test clock: prorations are to the second,
    so the tests' time stands still between the clock's moves."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": ctl("GET", "clock")["now"]})
    customer = client.v1.customers.create(params={**CARD, "test_clock": clock.id})
    price = recurring_price(client, 1500)
    items: Any = [{"price": price.id, "quantity": quantity}]
    sub = client.v1.subscriptions.create(params={"customer": customer.id, "items": items})
    return customer.id, sub.id


def advance_to(client: stripe.StripeClient, sub_id: str, at: int) -> int:
    """Move the subscription's test clock to `at`; returns the clock's time."""
    customer = client.v1.subscriptions.retrieve(sub_id).customer
    clock = client.v1.customers.retrieve(str(customer)).test_clock
    moved = client.v1.test_helpers.test_clocks.advance(str(clock), {"frozen_time": at})
    return moved.frozen_time


def _ten_days_in(client: stripe.StripeClient, sub_id: str) -> tuple[Any, int]:
    sub = client.v1.subscriptions.retrieve(sub_id)
    at = advance_to(client, sub_id, sub["items"].data[0].current_period_start + 10 * DAY + 7)
    return sub, at


def _lines(invoice: Any) -> list[tuple[int, bool, str]]:
    return [
        (line.amount, line.parent.subscription_item_details.proration, line.description)
        for line in invoice.lines.data
    ]


def test_a_seat_change_is_prorated_on_the_next_invoice(
    client: stripe.StripeClient, ctl: Control
) -> None:
    _, sub_id = subscribe(client, ctl, quantity=2)
    sub, at = _ten_days_in(client, sub_id)
    item = sub["items"].data[0]
    client.v1.subscriptions.update(sub_id, {"items": [{"id": item.id, "quantity": 3}]})
    # Pending: nothing is invoiced now.
    assert len(client.v1.invoices.list(params={"subscription": sub_id}).data) == 1

    advance_to(client, sub_id, item.current_period_end + 60)
    renewal = client.v1.invoices.retrieve(client.v1.subscriptions.retrieve(sub_id).latest_invoice)
    credit, charge = -_prorated(3000, sub, at), _prorated(4500, sub, at)
    assert [(amount, proration) for amount, proration, _ in _lines(renewal)] == [
        (credit, True),
        (charge, True),
        (4500, False),
    ]
    assert renewal.amount_due == credit + charge + 4500
    first = renewal.lines.data[0]
    assert first.description.startswith("Unused time on 2 x ")
    assert renewal.lines.data[1].description.startswith("Remaining time on 3 x ")
    assert (first.period.start, first.period.end) == (at, item.current_period_end)
    details = first.parent.subscription_item_details
    assert details.invoice_item and details.invoice_item.startswith("ii_")
    assert details.subscription_item == item.id
    # Invoiced once: the next renewal has no prorations.
    end = client.v1.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end
    advance_to(client, sub_id, end + 60)
    later = client.v1.invoices.retrieve(client.v1.subscriptions.retrieve(sub_id).latest_invoice)
    assert later.id != renewal.id and _lines(later)[0][:2] == (4500, False)
    assert len(later.lines.data) == 1


def test_always_invoice_bills_an_upgrade_at_once(client: stripe.StripeClient, ctl: Control) -> None:
    _, sub_id = subscribe(client, ctl)
    sub, at = _ten_days_in(client, sub_id)
    better = recurring_price(client, 4000)
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub_id,
        {"items": [{"id": item.id, "price": better.id}], "proration_behavior": "always_invoice"},
    )
    invoice = client.v1.invoices.retrieve(updated.latest_invoice or "")
    assert invoice.id != sub.latest_invoice
    assert (invoice.billing_reason, invoice.status) == ("subscription_update", "paid")
    assert [amount for amount, _, _ in _lines(invoice)] == [
        -_prorated(1500, sub, at),
        _prorated(4000, sub, at),
    ]
    assert invoice.amount_paid == _prorated(4000, sub, at) - _prorated(1500, sub, at)
    # The period is unchanged, and the renewal bills the new price alone.
    assert updated["items"].data[0].current_period_end == item.current_period_end
    advance_to(client, sub_id, item.current_period_end + 60)
    renewal = client.v1.invoices.retrieve(client.v1.subscriptions.retrieve(sub_id).latest_invoice)
    assert [amount for amount, _, _ in _lines(renewal)] == [4000]


def test_a_declined_proration_invoice_makes_the_subscription_past_due(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer, sub_id = subscribe(client, ctl)
    sub, at = _ten_days_in(client, sub_id)
    decline_future_charges(client, customer, sub_id)
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub_id,
        {"items": [{"id": item.id, "quantity": 2}], "proration_behavior": "always_invoice"},
    )
    invoice = client.v1.invoices.retrieve(updated.latest_invoice or "")
    assert (invoice.status, invoice.attempt_count) == ("open", 1)
    assert invoice.amount_due == _prorated(3000, sub, at) - _prorated(1500, sub, at)
    assert invoice.next_payment_attempt == at + 3 * DAY
    assert client.v1.subscriptions.retrieve(sub_id).status == "past_due"
    client.v1.invoices.pay(invoice.id, {"payment_method": "pm_card_visa"})
    assert client.v1.subscriptions.retrieve(sub_id).status == "active"


def test_no_prorations_with_none_nor_for_a_downgrade_credit_beyond_its_charge(
    client: stripe.StripeClient, ctl: Control
) -> None:
    _, sub_id = subscribe(client, ctl, quantity=4)
    sub, at = _ten_days_in(client, sub_id)
    item = sub["items"].data[0]
    params: Any = {"items": [{"id": item.id, "quantity": 3}], "proration_behavior": "none"}
    client.v1.subscriptions.update(sub_id, params)
    params = {"items": [{"id": item.id, "quantity": 1}], "proration_behavior": "always_invoice"}
    downgraded = client.v1.subscriptions.update(sub_id, params)
    credit = client.v1.invoices.retrieve(downgraded.latest_invoice or "")
    # A negative total: nothing due, the invoice paid (Stripe credits the customer's balance).
    assert credit.total == _prorated(1500, sub, at) - _prorated(4500, sub, at) < 0
    assert (credit.amount_due, credit.status) == (0, "paid")
    advance_to(client, sub_id, item.current_period_end + 60)
    renewal = client.v1.invoices.retrieve(client.v1.subscriptions.retrieve(sub_id).latest_invoice)
    assert [amount for amount, _, _ in _lines(renewal)] == [1500]


def test_a_portal_change_is_prorated_and_an_immediate_cancel_drops_it(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer, sub_id = subscribe(client, ctl, quantity=2)
    sub, at = _ten_days_in(client, sub_id)
    item = sub["items"].data[0]
    flow = {"subscription": sub_id, "items": [{"id": item.id, "quantity": 5}]}
    session = client.v1.billing_portal.sessions.create(
        params={
            "customer": customer,
            "flow_data": {
                "type": "subscription_update_confirm",
                "subscription_update_confirm": flow,
            },
        }
    )
    ctl("POST", f"billing_portal/sessions/{session.id}/confirm", {})
    assert len(client.v1.invoices.list(params={"subscription": sub_id}).data) == 1
    client.v1.subscriptions.cancel(sub_id, {"invoice_now": True})
    invoice = client.v1.invoices.list(params={"subscription": sub_id}).data[0]
    assert invoice.billing_reason == "subscription_update" and invoice.status == "paid"
    assert [amount for amount, _, _ in _lines(invoice)] == [
        -_prorated(3000, sub, at),
        _prorated(7500, sub, at),
    ]

    _, other = subscribe(client, ctl, quantity=2)
    other_item = client.v1.subscriptions.retrieve(other)["items"].data[0]
    client.v1.subscriptions.update(other, {"items": [{"id": other_item.id, "quantity": 3}]})
    client.v1.subscriptions.cancel(other)
    assert len(client.v1.invoices.list(params={"subscription": other}).data) == 1


def test_prorate_credits_the_unused_time_on_the_final_invoice(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """`prorate` credits the unused time of the period; with `invoice_now` the final invoice
    bills the pending prorations and that credit."""
    _, sub_id = subscribe(client, ctl, quantity=2)
    sub, at = _ten_days_in(client, sub_id)
    item = sub["items"].data[0]
    client.v1.subscriptions.update(sub_id, {"items": [{"id": item.id, "quantity": 3}]})
    client.v1.subscriptions.cancel(sub_id, {"invoice_now": True, "prorate": True})
    final = client.v1.invoices.list(params={"subscription": sub_id}).data[0]
    assert final.billing_reason == "subscription_update"
    assert [(amount, proration) for amount, proration, _ in _lines(final)] == [
        (-_prorated(3000, sub, at), True),
        (_prorated(4500, sub, at), True),
        (-_prorated(4500, sub, at), True),
    ]


def test_a_new_interval_credits_the_unused_time_on_its_invoice(
    client: stripe.StripeClient, ctl: Control
) -> None:
    _, sub_id = subscribe(client, ctl)
    sub, at = _ten_days_in(client, sub_id)
    yearly = recurring_price(client, 15000, interval="year")
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub_id, {"items": [{"id": item.id, "price": yearly.id}]}
    )
    invoice = client.v1.invoices.retrieve(updated.latest_invoice or "")
    assert [amount for amount, _, _ in _lines(invoice)] == [-_prorated(1500, sub, at), 15000]
    assert invoice.status == "paid" and updated["items"].data[0].current_period_start == at
