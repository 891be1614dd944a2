"""Usage ingest: records are written to the outbox (`billing_usage_events`) and nothing else.

Ingest never calls Stripe: the sender (`usage/sender.py`) posts the records as meter events
later, so usage is accepted while Stripe is slow or down, and a crash loses nothing that was
answered 202. A record is identified by (user, idempotency key): a repeat is answered as a
duplicate and not stored. The meter event's `identifier` at Stripe is derived from the same
pair, so a record is counted once at Stripe however often it is sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import BillingError
from collab_billing.db.dialect import insert
from collab_billing.db.engine import transaction
from collab_billing.db.models import (
    BillingMeter,
    BillingPreference,
    BillingState,
    BillingUsageEvent,
    User,
)
from collab_billing.state import outbox, spend
from collab_billing.state.access import rules_of

# Stripe takes a meter event at most 35 days old; a record is sent later (a backlog, Stripe's
# faults and 429s), so one older than 34 days, which may no longer reach Stripe, is refused
# at ingest rather than accepted and then failed.
PAST_WINDOW_SECONDS = 34 * 86_400
FUTURE_WINDOW_SECONDS = 5 * 60  # and at most 5 minutes ahead


class Unprocessable(BillingError):
    status_code = 422


@dataclass(frozen=True)
class UsageRecord:
    github_user_id: int
    meter: str  # the meter's event_name
    value: Decimal
    timestamp: int  # Unix seconds
    idempotency_key: str


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    over_spend_cap: bool


def meter_event_identifier(github_user_id: int, idempotency_key: str) -> str:
    """The meter event's `identifier` (<= 100 characters): the same record gives the same
    identifier in any process at any time, so Stripe refuses a second send of it."""
    digest = hashlib.sha256(f"{github_user_id}\0{idempotency_key}".encode()).hexdigest()[:40]
    return f"cb-{github_user_id}-{digest}"


def ingest(factory: sessionmaker[Session], records: Sequence[UsageRecord]) -> IngestResult:
    """Store the records (all or none) and say how many were new; 422 (`Unprocessable`)
    naming the first unknown user or meter, with nothing stored."""
    with transaction(factory) as session:
        # Core statements on the session's connection: the ORM's layers cost a third of a batch.
        connection = session.connection()
        users = _user_ids(connection, {record.github_user_id for record in records})
        _check_meters(connection, {record.meter for record in records})
        rows = _rows(records, users)
        table = BillingUsageEvent.__table__
        statement = (
            insert(session, table)
            .on_conflict_do_nothing(index_elements=["user_id", "idempotency_key"])
            .returning(table.c.id)
        )
        accepted = len(connection.execute(statement, rows).all()) if rows else 0
        over_cap = _mark_flipped_caps(session, set(users.values()))
    return IngestResult(accepted, len(records) - accepted, bool(over_cap))


def _mark_flipped_caps(session: Session, user_ids: set[int]) -> set[int]:
    """The users of a batch who are past their cap now; those whose stored state document
    says otherwise are marked, so that the document (`usage.over_spend_cap`) and its
    notification commit with the records. Only users with a cap are priced: a batch of
    uncapped users costs one statement. Their documents are locked first (PostgreSQL; in user
    id order, as every writer of `billing_states` takes them): two batches of one user at once
    would each price only their own records, and neither would see the cap passed."""
    capped_ids = session.scalars(
        select(BillingPreference.user_id).where(
            BillingPreference.user_id.in_(user_ids),
            BillingPreference.max_monthly_spend_cents.is_not(None),
        )
    ).all()
    if not capped_ids:
        return set()
    locked = (
        select(BillingState.user_id, BillingState.document)
        .where(BillingState.user_id.in_(capped_ids))
        .order_by(BillingState.user_id)
        .with_for_update()
    )
    documents: dict[int, dict[str, Any] | None] = {
        user_id: document for user_id, document in session.execute(locked)
    }
    capped = [(user_id, documents.get(user_id)) for user_id in capped_ids]
    now = rules_of(session).clock()
    over = {
        user_id for user_id, _ in capped if spend.user_spend(session, user_id, now).over_spend_cap
    }
    flipped = [
        user_id
        for user_id, document in capped
        if document is None or document["usage"]["over_spend_cap"] != (user_id in over)
    ]
    outbox.mark(session, users=flipped)
    return over


def set_cap(factory: sessionmaker[Session], user_id: int, cents: int | None) -> None:
    """Set the user's monthly spend cap (None: none); the state document shows it."""
    with transaction(factory) as session:
        statement = insert(session, BillingPreference.__table__).values(
            user_id=user_id, max_monthly_spend_cents=cents
        )
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["user_id"],
                set_={"max_monthly_spend_cents": cents, "updated_at": func.now()},
            )
        )
        outbox.mark(session, users=[user_id])


def _user_ids(connection: Connection, github_user_ids: set[int]) -> dict[int, int]:
    users = User.__table__.c
    statement = select(users.github_user_id, users.id).where(
        users.github_user_id.in_(github_user_ids)
    )
    found = {github_user_id: user_id for github_user_id, user_id in connection.execute(statement)}
    unknown = sorted(github_user_ids - found.keys())
    if unknown:
        raise Unprocessable(
            f"unknown github_user_id {unknown[0]}: create the user with POST /users first"
        )
    return found


def _check_meters(connection: Connection, event_names: set[str]) -> None:
    meters = BillingMeter.__table__.c
    known = set(
        connection.scalars(
            select(meters.event_name).where(
                meters.event_name.in_(event_names), meters.status == "active"
            )
        )
    )
    unknown = sorted(event_names - known)
    if unknown:
        raise Unprocessable(
            f"unknown meter {unknown[0]!r}: no active Stripe billing meter has this event_name "
            "(meters are read from Stripe at start and hourly; `collab-billing resync` reads a "
            "new one at once)"
        )


def _rows(records: Sequence[UsageRecord], users: dict[int, int]) -> list[dict[str, object]]:
    """One row per (user, key): a key repeated within the batch is a duplicate too."""
    rows: dict[tuple[int, str], dict[str, object]] = {}
    for record in records:
        key = (users[record.github_user_id], record.idempotency_key)
        rows.setdefault(
            key,
            {
                "user_id": key[0],
                "meter_event_name": record.meter,
                "value": record.value,
                "timestamp": record.timestamp,
                "idempotency_key": record.idempotency_key,
                "identifier": meter_event_identifier(record.github_user_id, key[1]),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": 0,
            },
        )
    return list(rows.values())
