"""Shared steps of the reconciler tests: bulk users, a cursor in the past, the final check."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.models import BillingSubscription, ProcessedStripeEvent, User
from collab_billing.mirror.registry import MIRROR_FORMAT, RELEVANT_TYPES
from collab_billing.reconcile import ledger
from tests.stripe_helpers import Emulator


def generate_backlog(
    emulator: Emulator, factory: sessionmaker[Session], customers: int, per_customer: int
) -> dict[str, Any]:
    """Users 1..N in our database and a backlog of their events in the emulator, newer than a
    cursor left eight days back (as if the service had been down that long)."""
    with factory() as session, session.begin():
        session.execute(
            insert(User),
            [{"github_user_id": n, "github_login": f"user{n}"} for n in range(1, customers + 1)],
        )
        ledger.write_state(session, ledger.CURSOR, int(time.time()) - 8 * 86400)
        ledger.write_state(session, ledger.LAST_DRAIN_AT, int(time.time()))
        ledger.write_state(session, ledger.MIRROR_FORMAT, MIRROR_FORMAT)
    emulator.price()
    # Generated events are spread over the week before the emulator's "now", but never before
    # its newest event (the price's): move the clock on so they spread over a real week.
    emulator.control("POST", "clock/advance", {"seconds": 8 * 86400})
    result: dict[str, Any] = emulator.control(
        "POST",
        "generate",
        {"customers": customers, "events_per_customer": per_customer, "first_github_user_id": 1},
    )
    return result


def relevant_event_ids(emulator: Emulator) -> set[str]:
    return {e["id"] for e in emulator.all_events() if e["type"] in RELEVANT_TYPES}


def processed_event_ids(factory: sessionmaker[Session]) -> list[str]:
    with factory() as session:
        return list(session.scalars(select(ProcessedStripeEvent.stripe_event_id)))


def assert_matches_stripe(emulator: Emulator, factory: sessionmaker[Session]) -> int:
    """Every subscription row equals the emulator's object; returns how many were compared."""
    with factory() as session:
        rows = {r.stripe_subscription_id: r for r in session.scalars(select(BillingSubscription))}
    subscriptions = emulator.state()["subscriptions"]
    expected = {s["id"]: s for s in _as_list(subscriptions)}
    assert set(rows) == set(expected)
    for sub_id, sub in expected.items():
        row = rows[sub_id]
        assert row.stripe_subscription_status == sub["status"], sub_id
        assert row.stripe_cancel_at_period_end == sub["cancel_at_period_end"], sub_id
        assert _ts(row.stripe_cancel_at) == sub["cancel_at"], sub_id
    return len(expected)


def _as_list(value: Any) -> list[dict[str, Any]]:
    return list(value.values()) if isinstance(value, dict) else list(value)


def _ts(value: datetime | None) -> int | None:
    if value is None:
        return None
    return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
