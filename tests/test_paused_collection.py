"""`pause_collection` set on a subscription in the Dashboard (Stripe's "offer your services
for free" for a while: the subscription stays `active`, its invoices keep being made, no
payment is collected; docs.stripe.com/billing/subscriptions/pause-payment).

With `behavior=mark_uncollectible`, each renewal's invoice is finalized and marked
uncollectible at once, never charged (`attempt_count` 0; API 2026-09-30 names the reason
`status_details.uncollectible.reason: subscription_paused`). That free period is no debt of
the user's: it was listed overdue, `pay_invoice` offered it (even ahead of the invoice a
later declined renewal left open, whose payment is what ends `past_due`), and it dated that
later failure's grace: the user was `blocked` at once instead of getting the grace days.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from collab_billing.config import Settings
from tests.stripe_helpers import Emulator
from tests.test_billing_cycle import HOUR, Cycle, emulator_now, running


@pytest.fixture
def cycle(stripe_settings: Settings, engine: Engine, emulator: Emulator) -> Iterator[Cycle]:
    """The service judging access by the emulator's clock, and a reconciler."""
    yield from running(
        stripe_settings,
        engine,
        emulator,
        lambda: datetime.fromtimestamp(emulator_now(emulator), UTC),
    )


def test_the_emulator_applies_each_pause_behavior_to_a_renewal(
    cycle: Cycle, emulator: Emulator
) -> None:
    outcomes = {}
    for user, behavior in enumerate(("keep_as_draft", "mark_uncollectible", "void"), start=811):
        cycle.add_user(user)
        sub_id = cycle.subscribe(user)
        cycle.sdk.subscriptions.update(sub_id, {"pause_collection": {"behavior": behavior}})
        emulator.past_period_end(sub_id, 2 * HOUR)  # past the renewal draft's hour
        sub = cycle.sdk.subscriptions.retrieve(sub_id)
        invoice = cycle.sdk.invoices.retrieve(sub.latest_invoice or "")
        outcomes[behavior] = (sub.status, invoice.status, invoice.attempt_count)
    assert outcomes == {
        "keep_as_draft": ("active", "draft", 0),
        "mark_uncollectible": ("active", "uncollectible", 0),
        "void": ("active", "void", 0),
    }


def test_a_period_given_free_by_pause_collection_is_not_owed(
    cycle: Cycle, emulator: Emulator
) -> None:
    user = 801
    cycle.add_user(user)
    sub_id = cycle.subscribe(user)
    cycle.sdk.subscriptions.update(sub_id, {"pause_collection": {"behavior": "mark_uncollectible"}})
    emulator.past_period_end(sub_id, 2 * HOUR)
    free = cycle.sdk.subscriptions.retrieve(sub_id).latest_invoice or ""
    assert cycle.sdk.invoices.retrieve(free).status == "uncollectible"
    view = cycle.view(user)
    assert (view["access"]["state"], view["overdue_invoices"]) == ("active", [])
    paying = cycle.api.post(
        "/billing/subscriptions/manage", json={"github_user_id": user, "intent": "pay_invoice"}
    )
    assert paying.status_code == 409, paying.text

    # Collection resumes; the next renewal is declined: the grace counts from that failure.
    cycle.sdk.subscriptions.update(sub_id, {"pause_collection": ""})
    cycle.decline_renewals(sub_id)
    emulator.past_period_end(sub_id, 2 * HOUR)
    declined = cycle.sdk.invoices.retrieve(cycle.sdk.subscriptions.retrieve(sub_id).latest_invoice)
    assert declined.status == "open" and declined.attempt_count == 1
    charged = declined.status_transitions.finalized_at or 0
    until = datetime.fromtimestamp(charged, UTC) + timedelta(days=3)
    view = cycle.view(user)
    assert view["subscriptions"][0]["status"] == "past_due"
    assert view["access"] == {"state": "grace", "until": f"{until:%Y-%m-%dT%H:%M:%SZ}"}
    assert [i["id"] for i in view["overdue_invoices"]] == [declined.id]
    state = cycle.api.get("/billing/state", params={"github_user_id": user}).json()
    assert state["access"] == view["access"]
    paying = cycle.api.post(
        "/billing/subscriptions/manage", json={"github_user_id": user, "intent": "pay_invoice"}
    )
    assert paying.json() == {"hosted_invoice_url": declined.hosted_invoice_url}
