"""A renewal's invoice through the SDK: Stripe creates it as a `draft` when the period ends
(no number, no hosted page, `automatically_finalizes_at` an hour on), then finalizes and
charges it an hour later; the subscription's status follows the payment only then. A
subscription's first invoice is finalized and charged at once. Usage of the period that ended,
reported while the invoice is a draft, is billed on it."""

from __future__ import annotations

import stripe

from tests.emulator.conftest import Control, advance_to, recurring_price
from tests.emulator.test_invoices import decline_future_charges, subscribe, types_since
from tests.emulator.test_meters import make_meter
from tests.emulator.test_usage_invoices import metered_price, report, subscribe_with_card

HOUR = 3600
DAY = 86_400


def period_end(client: stripe.StripeClient, sub_id: str) -> int:
    end: int = client.v1.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end
    return end


def test_a_renewal_invoice_stays_draft_an_hour_then_is_finalized_and_paid(
    client: stripe.StripeClient, ctl: Control
) -> None:
    _, sub_id = subscribe(client, ctl)
    [first] = client.v1.invoices.list(params={"subscription": sub_id}).data
    assert first.status == "paid" and first.status_transitions.finalized_at == first.created
    renewal = period_end(client, sub_id)

    advance_to(ctl, renewal + 60)
    renewed = ["customer.subscription.updated", "invoice.created"]
    assert types_since(client, renewal) == renewed
    sub = client.v1.subscriptions.retrieve(sub_id)
    draft = client.v1.invoices.retrieve(sub.latest_invoice or "")
    assert (draft.status, draft.billing_reason, draft.created) == (
        "draft",
        "subscription_cycle",
        renewal,
    )
    assert draft.automatically_finalizes_at == renewal + HOUR
    assert draft.next_payment_attempt == renewal + HOUR
    assert (draft.hosted_invoice_url, draft.invoice_pdf, draft.number) == (None, None, None)
    assert draft.status_transitions.finalized_at is None and draft.effective_at is None
    assert (draft.attempted, draft.attempt_count, draft.amount_paid) == (False, 0, 0)
    assert draft.amount_remaining == draft.amount_due == 1500
    assert draft.auto_advance is True
    listed = client.v1.invoices.list(params={"subscription": sub_id, "status": "draft"}).data
    assert [i.id for i in listed] == [draft.id]
    created = client.v1.events.list(params={"type": "invoice.created", "limit": 1}).data[0]
    assert created.data.object["status"] == "draft"

    advance_to(ctl, renewal + HOUR - 300)
    assert client.v1.invoices.retrieve(draft.id).status == "draft"
    assert types_since(client, renewal) == renewed  # nothing more yet

    advance_to(ctl, renewal + HOUR + 60)
    assert types_since(client, renewal + HOUR) == [
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    paid = client.v1.invoices.retrieve(draft.id)
    assert (paid.status, paid.amount_paid, paid.attempt_count) == ("paid", 1500, 1)
    assert paid.status_transitions.finalized_at == renewal + HOUR
    assert paid.status_transitions.paid_at == renewal + HOUR
    assert paid.automatically_finalizes_at is None and paid.next_payment_attempt is None
    assert paid.number and paid.hosted_invoice_url and draft.id in paid.hosted_invoice_url
    assert client.v1.subscriptions.retrieve(sub_id).status == "active"


def test_a_declined_renewal_goes_past_due_when_its_draft_is_finalized(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """On a test clock, to the second: active with a draft for the hour, past due from the
    declined attempt on, whose retries count from it."""
    start = ctl("GET", "clock")["now"]
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start})
    customer = client.v1.customers.create(params={"test_clock": clock.id})
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": recurring_price(client, 700).id, "quantity": 1}],
        }
    )
    sub_id = ctl("POST", f"checkout/sessions/{session.id}/complete", {})["subscription"]
    decline_future_charges(client, customer.id, sub_id)
    renewal = period_end(client, sub_id)

    clocks = client.v1.test_helpers.test_clocks
    clocks.advance(clock.id, {"frozen_time": renewal + HOUR - 1})
    sub = client.v1.subscriptions.retrieve(sub_id)
    draft = client.v1.invoices.retrieve(sub.latest_invoice or "")
    assert (sub.status, draft.status, draft.attempt_count) == ("active", "draft", 0)
    assert draft.automatically_finalizes_at == renewal + HOUR

    clocks.advance(clock.id, {"frozen_time": renewal + HOUR})
    sub = client.v1.subscriptions.retrieve(sub_id)
    failed = client.v1.invoices.retrieve(draft.id)
    assert (sub.status, failed.status, failed.attempt_count) == ("past_due", "open", 1)
    assert failed.status_transitions.finalized_at == renewal + HOUR
    assert failed.next_payment_attempt == renewal + HOUR + 3 * DAY
    assert failed.hosted_invoice_url and failed.automatically_finalizes_at is None

    clocks.advance(clock.id, {"frozen_time": renewal + HOUR + 3 * DAY})
    assert client.v1.invoices.retrieve(draft.id).attempt_count == 2


def test_usage_reported_in_the_draft_hour_is_billed_on_the_renewal(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """Stripe's finalization grace period: usage of the period that ended, reported while its
    invoice is a draft, is billed when the invoice is finalized; reported later, it is not."""
    price = metered_price(client, make_meter(client), "2")
    sub_id = subscribe_with_card(client, [{"price": price}])
    customer = str(client.v1.subscriptions.retrieve(sub_id).customer)
    renewal = period_end(client, sub_id)
    report(client, "tokens", customer, "10")

    advance_to(ctl, renewal + 60)
    latest = client.v1.subscriptions.retrieve(sub_id).latest_invoice
    draft = client.v1.invoices.retrieve(str(latest))
    assert (draft.status, draft.amount_due, draft.lines.data[0].quantity) == ("draft", 20, 10)
    late = {"stripe_customer_id": customer, "value": "5"}
    in_period = {"event_name": "tokens", "payload": late, "timestamp": renewal - 120}
    client.v1.billing.meter_events.create(params=in_period)

    advance_to(ctl, renewal + HOUR + 60)
    billed = client.v1.invoices.retrieve(draft.id)
    assert (billed.status, billed.amount_due, billed.amount_paid) == ("paid", 30, 30)
    assert (billed.lines.data[0].quantity, billed.lines.data[0].amount) == (15, 30)
    too_late = {**in_period, "payload": {**late, "value": "7"}}
    client.v1.billing.meter_events.create(params=too_late)
    assert client.v1.invoices.retrieve(draft.id).amount_due == 30


def test_a_subscription_canceled_within_the_draft_hour_is_not_charged(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """Stripe stops automatic collection of a canceled subscription's invoices
    (https://docs.stripe.com/api/subscriptions/cancel): its renewal's draft gets
    `auto_advance=false` and is neither finalized nor charged an hour on."""
    _, sub_id = subscribe(client, ctl)
    renewal = period_end(client, sub_id)
    advance_to(ctl, renewal + 60)
    draft_id = client.v1.subscriptions.retrieve(sub_id).latest_invoice or ""
    assert client.v1.invoices.retrieve(draft_id).status == "draft"

    advance_to(ctl, renewal + 600)
    assert client.v1.subscriptions.cancel(sub_id).status == "canceled"
    stopped = client.v1.invoices.retrieve(draft_id)
    assert (stopped.status, stopped.auto_advance) == ("draft", False)
    assert stopped.automatically_finalizes_at is None and stopped.next_payment_attempt is None
    assert types_since(client, renewal + 600) == [
        "customer.subscription.deleted",
        "invoice.updated",
    ]
    # The cancellation's events are stamped by the running clock: a second may pass first.
    canceled_by = client.v1.events.list(params={"limit": 1}).data[0].created

    advance_to(ctl, renewal + 2 * HOUR)
    after = client.v1.invoices.retrieve(draft_id)
    assert (after.status, after.attempt_count, after.amount_paid) == ("draft", 0, 0)
    assert types_since(client, canceled_by + 1) == []
