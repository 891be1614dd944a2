"""Test clocks through the SDK: a clock's customer, subscription and invoices follow its time
alone; advancing renews and retries them; the emulator's own clock leaves them alone."""

from __future__ import annotations

import pytest
import stripe

from tests.emulator.conftest import Control, months_later, recurring_price

DAY = 86_400


def clock_subscription(client: stripe.StripeClient, ctl: Control, clock: str) -> tuple[str, str]:
    customer = client.v1.customers.create(params={"test_clock": clock, "email": "t@example.com"})
    price = recurring_price(client, 1200)
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": price.id, "quantity": 1}],
        }
    )
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    return customer.id, done["subscription"]


def test_clock_lifecycle(client: stripe.StripeClient, ctl: Control) -> None:
    start = ctl("GET", "clock")["now"] - 10 * DAY
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start, "name": "cycle"})
    assert (clock.status, clock.frozen_time, clock.name) == ("ready", start, "cycle")
    customer, sub_id = clock_subscription(client, ctl, clock.id)
    assert client.v1.customers.retrieve(customer).test_clock == clock.id
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.test_clock == clock.id and sub.start_date == start
    period_end = sub["items"].data[0].current_period_end
    assert period_end == months_later(start, 1) and sub.billing_cycle_anchor == start

    # The emulator's own clock does not move the clock's objects.
    ctl("POST", "clock/advance", {"seconds": 40 * DAY})
    assert client.v1.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end == (
        period_end
    )

    card = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer})
    client.v1.subscriptions.update(sub_id, {"default_payment_method": card.id})
    advanced = client.v1.test_helpers.test_clocks.advance(
        clock.id, {"frozen_time": period_end + 3600}
    )
    assert advanced.status == "advancing" and advanced.frozen_time == period_end + 3600
    assert client.v1.test_helpers.test_clocks.retrieve(clock.id).status == "ready"
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "past_due"
    invoice = client.v1.invoices.retrieve(sub.latest_invoice or "")
    assert invoice.test_clock == clock.id and invoice.created == period_end
    # Finalized and declined an hour after the renewal (a draft till then); retried 3 days on.
    assert invoice.status_transitions.finalized_at == period_end + 3600
    assert invoice.next_payment_attempt == period_end + 3600 + 3 * DAY

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": period_end + 16 * DAY})
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "canceled"
    assert sub.cancellation_details and sub.cancellation_details.reason == "payment_failed"
    assert client.v1.invoices.retrieve(invoice.id).attempt_count == 4
    types = {e.type for e in client.v1.events.list(params={"type": "test_helpers.*"}).data}
    # (`.created` is older than the 30 days of events kept: the real clock moved 40 days.)
    assert types == {"test_helpers.test_clock.advancing", "test_helpers.test_clock.ready"}

    listed = client.v1.test_helpers.test_clocks.list()
    assert [c.id for c in listed.data] == [clock.id]
    deleted = client.v1.test_helpers.test_clocks.delete(clock.id)
    assert deleted.deleted is True
    assert client.v1.customers.retrieve(customer).to_dict().get("deleted") is True
    assert client.v1.test_helpers.test_clocks.list().data == []


def test_clock_errors(client: stripe.StripeClient, ctl: Control) -> None:
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": 1_800_000_000})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": 1_700_000_000})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.test_helpers.test_clocks.retrieve("clock_nope")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.customers.create(params={"test_clock": "clock_nope"})
    client.v1.test_helpers.test_clocks.delete(clock.id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.test_helpers.test_clocks.retrieve(clock.id)


def test_a_clock_subscription_canceled_now_ends_at_the_clocks_time(
    client: stripe.StripeClient, ctl: Control
) -> None:
    start = ctl("GET", "clock")["now"] - 10 * DAY
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start})
    _, sub_id = clock_subscription(client, ctl, clock.id)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": start + 2 * DAY})
    canceled = client.v1.subscriptions.cancel(sub_id)
    assert (canceled.canceled_at, canceled.ended_at) == (start + 2 * DAY, start + 2 * DAY)
