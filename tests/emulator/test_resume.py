"""`POST /v1/subscriptions/{id}/resume` (https://docs.stripe.com/api/subscriptions/resume): a
subscription paused as its card-less trial ended resumes with a new period from now, invoiced
at once (`billing_cycle_anchor=now`, the default; `past_due` if that payment fails), or in the
period that surrounds now with its anchor kept (`unchanged`), the remaining time prorated per
`proration_behavior`."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import stripe

from tests.emulator.conftest import Control, advance_to
from tests.emulator.test_invoices import api_subscription

DAY = 86_400


def _paused(client: stripe.StripeClient, ctl: Control, card: str) -> tuple[Any, int]:
    """A trial that ended without a card (paused), then the card given 10 days on."""
    settings = {"end_behavior": {"missing_payment_method": "pause"}}
    customer, sub = api_subscription(client, {}, trial_period_days=7, trial_settings=settings)
    advance_to(ctl, (sub.trial_end or 0) + 10 * DAY)
    paused = client.v1.subscriptions.retrieve(sub.id)
    assert paused.status == "paused"
    pm = client.v1.payment_methods.attach(card, {"customer": customer})
    client.v1.customers.update(customer, {"invoice_settings": {"default_payment_method": pm.id}})
    return paused, ctl("GET", "clock")["now"]


def test_resume_now_starts_a_period_billed_at_once(
    client: stripe.StripeClient, ctl: Control
) -> None:
    paused, now = _paused(client, ctl, "pm_card_visa")
    resumed = client.v1.subscriptions.resume(paused.id)
    item = resumed["items"].data[0]
    assert (resumed.status, resumed.billing_cycle_anchor, item.current_period_start) == (
        "active",
        now,
        now,
    )
    invoice = client.v1.invoices.retrieve(resumed.latest_invoice or "")
    assert (invoice.status, invoice.amount_paid) == ("paid", 1500)
    assert [line.amount for line in invoice.lines.data] == [1500]


def test_resume_now_with_a_declined_card_is_past_due(
    client: stripe.StripeClient, ctl: Control
) -> None:
    paused, _ = _paused(client, ctl, "pm_card_chargeCustomerFail")
    resumed = client.v1.subscriptions.resume(paused.id)
    assert resumed.status == "past_due"
    assert client.v1.invoices.retrieve(resumed.latest_invoice or "").status == "open"


def test_resume_unchanged_keeps_the_anchor_and_prorates_the_rest_of_the_period(
    client: stripe.StripeClient, ctl: Control
) -> None:
    paused, now = _paused(client, ctl, "pm_card_visa")
    anchor = paused.billing_cycle_anchor
    resumed = client.v1.subscriptions.resume(
        paused.id, {"billing_cycle_anchor": "unchanged", "proration_behavior": "always_invoice"}
    )
    item = resumed["items"].data[0]
    assert (resumed.status, resumed.billing_cycle_anchor) == ("active", anchor)
    assert item.current_period_start == anchor < now < item.current_period_end
    start, end = item.current_period_start, item.current_period_end
    share = Decimal(end - now) / Decimal(end - start)
    prorated = int((1500 * share).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    invoice = client.v1.invoices.retrieve(resumed.latest_invoice or "")
    assert (invoice.billing_reason, invoice.status, invoice.amount_paid) == (
        "subscription_update",
        "paid",
        prorated,
    )
    assert invoice.lines.data[0].parent.subscription_item_details.proration is True

    # create_prorations (the default): the remaining time is billed with the renewal.
    other, _ = _paused(client, ctl, "pm_card_visa")
    kept = client.v1.subscriptions.resume(other.id, {"billing_cycle_anchor": "unchanged"})
    assert kept.latest_invoice == other.latest_invoice
    advance_to(ctl, kept["items"].data[0].current_period_end + 60)
    renewal = client.v1.subscriptions.retrieve(other.id).latest_invoice or ""
    lines = client.v1.invoices.retrieve(renewal).lines.data
    assert [line.parent.subscription_item_details.proration for line in lines] == [True, False]

    # none: nothing until the renewal.
    last, _ = _paused(client, ctl, "pm_card_visa")
    params: Any = {"billing_cycle_anchor": "unchanged", "proration_behavior": "none"}
    client.v1.subscriptions.resume(last.id, params)
    advance_to(ctl, client.v1.subscriptions.retrieve(last.id)["items"].data[0].current_period_end)
    advance_to(ctl, ctl("GET", "clock")["now"] + 60)
    renewal = client.v1.subscriptions.retrieve(last.id).latest_invoice or ""
    assert [line.amount for line in client.v1.invoices.retrieve(renewal).lines.data] == [1500]
