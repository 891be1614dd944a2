"""The reconciler's bookkeeping: processed events, events waiting for a retry, named state
(the events cursor, the last complete poll, the last resync)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, bindparam, cast, delete, func, select, text
from sqlalchemy.orm import Session

from collab_billing.db.dialect import execute_rows, in_ids, insert, insert_rows, is_postgres
from collab_billing.db.models import PendingStripeEvent, ProcessedStripeEvent, ReconcilerState
from collab_billing.stripe_gateway.events import Event

CURSOR = "events_cursor"
LAST_DRAIN_AT = "last_drain_at"
LAST_RESYNC_AT = "last_resync_at"
DOCUMENT_FORMAT = "state_document_format"  # `state.document.DOCUMENT_FORMAT` of stored ones
# The grace (seconds) the stored documents were judged by: `BILLING_PAST_DUE_GRACE_DAYS`.
DOCUMENT_GRACE = "state_document_grace_seconds"
MIRROR_FORMAT = "mirror_format"  # `mirror.registry.MIRROR_FORMAT` of the rows mirrored
# After this many failed tries an event counts as failed (status, metric); retries go on.
MAX_ATTEMPTS = 5
# Waiting events (held behind a failed one) are never due by themselves: the failed event's
# backoff decides when the object is tried again.
WAITING = 2**62


def claim(session: Session, events: Sequence[Event]) -> set[str]:
    """Write the ledger rows of `events`, to be applied in this transaction; returns the ids of
    those that were processed already (their rows were there): they must not be applied again.
    The caller holds the objects' locks, so no other transaction claims them meanwhile."""
    if not events:
        return set()
    rows = [dict(zip(_CLAIMED, (e.id, e.type, e.created), strict=True)) for e in events]
    # Core, on the session's connection: the ORM's bulk-insert path costs more than the insert.
    statement = _claim_statement(session.get_bind().dialect.name)
    inserted = set(execute_rows(session.connection(), statement, rows).scalars())
    return {event.id for event in events} - inserted


_CLAIMED = ("stripe_event_id", "stripe_event_type", "stripe_event_created_timestamp")


@cache
def _claim_statement(dialect: str) -> Any:
    """Built once per dialect (`db/queries.py` says why)."""
    table = ProcessedStripeEvent.__table__
    return (
        insert_rows(dialect, table, _CLAIMED)
        .on_conflict_do_nothing(index_elements=["stripe_event_id"])
        .returning(table.c.stripe_event_id)
    )


def lock_objects(session: Session, object_ids: Collection[str]) -> None:
    """On PostgreSQL, serialise the writers of each object (poller, webhooks, resync) for this
    transaction, taking the locks in one sorted order so that two never wait on each other.
    SQLite needs nothing: `BEGIN IMMEDIATE` serialises all writers."""
    if object_ids and is_postgres(session):
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(7341, k) "
                "FROM (SELECT DISTINCT hashtext(x) AS k FROM unnest(CAST(:ids AS text[])) AS x) s "
                "ORDER BY k"
            ),
            {"ids": sorted(object_ids)},
        )


# -- pending (failed or waiting) events --------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    event: Event
    object_id: str
    attempts: int
    last_error: str | None


_PENDING_OBJECT_IDS = select(PendingStripeEvent.stripe_object_id).distinct()


def pending_object_ids(session: Session) -> set[str]:
    return set(session.scalars(_PENDING_OBJECT_IDS))


def due_pending_events(session: Session, now: int) -> list[PendingEvent]:
    """Every pending event of the objects that have at least one event due for a retry."""
    due_objects = select(PendingStripeEvent.stripe_object_id).where(
        PendingStripeEvent.next_attempt_at <= now
    )
    rows = session.scalars(
        select(PendingStripeEvent)
        .where(PendingStripeEvent.stripe_object_id.in_(due_objects))
        .order_by(PendingStripeEvent.stripe_event_created_timestamp)
    )
    return [_pending(row) for row in rows]


def next_retry_at(session: Session) -> int | None:
    """When the next failed event is due for a retry; None when none is parked."""
    return session.scalar(
        select(func.min(PendingStripeEvent.next_attempt_at)).where(
            PendingStripeEvent.next_attempt_at < WAITING
        )
    )


def count_pending(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(PendingStripeEvent)) or 0


def all_pending_events(session: Session) -> list[PendingEvent]:
    rows = session.scalars(
        select(PendingStripeEvent).order_by(PendingStripeEvent.stripe_event_created_timestamp)
    )
    return [_pending(row) for row in rows]


def _pending(row: PendingStripeEvent) -> PendingEvent:
    return PendingEvent(
        Event.from_dict(row.payload),
        row.stripe_object_id,
        row.attempts,
        row.last_error,
    )


def record_pending(
    session: Session,
    events: Sequence[Event],
    object_id: str,
    error: str | None,
    next_attempt_at: int,
) -> None:
    """Keep the events of one object for a later try.

    With `error`, the object failed: its first event counts the attempt and every event gets
    the next try time. Without, the events wait behind an earlier failure; an event already
    pending keeps its schedule."""
    for position, event in enumerate(events):
        failed_here = error is not None and position == 0
        statement = insert(session, PendingStripeEvent).values(
            stripe_event_id=event.id,
            stripe_event_type=event.type,
            stripe_event_created_timestamp=event.created,
            stripe_object_id=object_id,
            payload=event.payload,
            attempts=1 if failed_here else 0,
            last_error=error if failed_here else None,
            next_attempt_at=next_attempt_at if error is not None else WAITING,
        )
        if error is None:
            session.execute(statement.on_conflict_do_nothing(index_elements=["stripe_event_id"]))
            continue
        changed: dict[str, Any] = {"next_attempt_at": next_attempt_at}
        if failed_here:
            changed["attempts"] = PendingStripeEvent.attempts + 1
            changed["last_error"] = error
        session.execute(
            statement.on_conflict_do_update(index_elements=["stripe_event_id"], set_=changed)
        )


def clear_pending(session: Session, event_ids: Collection[str]) -> None:
    if event_ids:
        session.execute(
            delete(PendingStripeEvent).where(PendingStripeEvent.stripe_event_id.in_(event_ids))
        )


# -- named state ----------------------------------------------------------------------------


# Core, on the session's connection: a value written in this transaction by `write_state`
# (a Core upsert) is read as written, not as an object the session loaded before.
_STATE_VALUE = select(ReconcilerState.value).where(ReconcilerState.name == bindparam("name"))


def read_int_state(session: Session, name: str) -> int | None:
    value = session.connection().scalar(_STATE_VALUE, {"name": name})
    return int(value) if value is not None else None


def write_state(session: Session, name: str, value: int) -> None:
    statement = insert(session, ReconcilerState).values(name=name, value=str(value))
    session.execute(
        statement.on_conflict_do_update(index_elements=["name"], set_={"value": str(value)})
    )


def advance_cursor(session: Session, created: int) -> None:
    """The cursor only moves forward, whoever (poll, resync) writes it."""
    statement = insert(session, ReconcilerState).values(name=CURSOR, value=str(created))
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"value": statement.excluded.value},
            where=cast(ReconcilerState.value, BigInteger)
            < cast(statement.excluded.value, BigInteger),
        )
    )


def processed(session: Session, event_ids: Collection[str]) -> set[str]:
    """Those of `event_ids` processed already."""
    if not event_ids:
        return set()
    return set(session.scalars(_PROCESSED, {"ids": list(event_ids)}))


# Built once (`db/queries.py` says why).
_PROCESSED = select(ProcessedStripeEvent.stripe_event_id).where(
    in_ids(ProcessedStripeEvent.stripe_event_id)
)


def newest_processed(session: Session) -> int | None:
    newest = session.scalar(func.max(ProcessedStripeEvent.stripe_event_created_timestamp))
    return None if newest is None else int(newest)
