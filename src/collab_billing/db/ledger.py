"""The reconciler's bookkeeping: processed events, events waiting for a retry, and the cursor."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from sqlalchemy import ARRAY, BigInteger, Engine, Table, Text, delete, func, literal, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from collab_billing.db.models import PendingStripeEvent, ProcessedStripeEvent, ReconcilerState
from collab_billing.stripe_objects import Event

# How many ids go into one `IN (...)`: far below SQLite's 32,766 bound-parameter limit.
IN_CHUNK = 5_000

CURSOR = "events_cursor"
LAST_DRAIN_AT = "last_drain_at"
LAST_RESYNC_AT = "last_resync_at"


def dialect_insert(session: Session) -> Any:
    """`INSERT` with `ON CONFLICT` support for the session's engine (same API on both)."""
    name = session.get_bind().dialect.name
    return postgresql.insert if name == "postgresql" else sqlite.insert


def is_postgres(bind: Session | Engine) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == "postgresql"


def chunks(items: Sequence[str], size: int = IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def matching(session: Session, column: Any, values: Collection[Any]) -> Iterator[Any]:
    """`column IN values` as one condition with one parameter, whatever the number of values.

    An `IN` of thousands of bound parameters costs more to build (SQLAlchemy renders each one,
    per execution) and to plan than to run. PostgreSQL gets an array, SQLite a JSON array;
    both are turned into rows server-side."""
    items = list(values)
    if not items:
        return
    if is_postgres(session):
        element = BigInteger() if isinstance(items[0], int) else Text()
        # `IN (SELECT unnest(:array))`, not `= ANY(:array)`: once psycopg prepares the
        # statement, the generic plan for ANY is a sequential scan comparing every row with
        # every element (seconds at 200k rows); the semi-join stays on the index.
        yield column.in_(select(func.unnest(literal(items, type_=ARRAY(element)))))
        return
    rows = func.json_each(literal(orjson.dumps(items).decode())).table_valued("value")
    yield column.in_(select(rows.c.value))


_PROCESSED = cast(Table, ProcessedStripeEvent.__table__)


def processed_ids(session: Session, event_ids: Collection[str]) -> set[str]:
    found: set[str] = set()
    column = _PROCESSED.c.stripe_event_id
    for condition in matching(session, column, event_ids):
        found.update(session.scalars(select(column).where(condition)))
    return found


_MARK_PROCESSED_POSTGRES = text(
    "INSERT INTO processed_stripe_events (stripe_event_id, stripe_event_type, "
    "stripe_event_created_timestamp) SELECT * FROM unnest(CAST(:ids AS text[]), "
    "CAST(:types AS text[]), CAST(:created AS bigint[])) "
    "ON CONFLICT (stripe_event_id) DO NOTHING"
)
_MARK_PROCESSED_SQLITE = text(
    "INSERT INTO processed_stripe_events (stripe_event_id, stripe_event_type, "
    "stripe_event_created_timestamp) SELECT value ->> 0, value ->> 1, value ->> 2 "
    "FROM json_each(:rows) WHERE true ON CONFLICT (stripe_event_id) DO NOTHING"
)


def mark_processed(session: Session, events: Sequence[Event]) -> None:
    """Insert ledger rows (those already there are left alone), in one statement whose rows
    are built server-side: from arrays (PostgreSQL) or a JSON array (SQLite). Per-row
    parameters cost more in SQLAlchemy and the driver than the writes themselves."""
    if not events:
        return
    if is_postgres(session):
        session.execute(
            _MARK_PROCESSED_POSTGRES,
            {
                "ids": [event.id for event in events],
                "types": [event.type for event in events],
                "created": [event.created for event in events],
            },
        )
        return
    rows = [(event.id, event.type, event.created) for event in events]
    session.execute(_MARK_PROCESSED_SQLITE, {"rows": json_rows(rows)})


def json_rows(rows: Sequence[Sequence[Any]]) -> str:
    """Rows for SQLite's `json_each(:rows)`, each read back with `value ->> index`."""
    return orjson.dumps(rows).decode()


# -- pending (failed or waiting) events --------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    event: Event
    object_id: str
    attempts: int
    last_error: str | None
    next_attempt_at: int


def pending_object_ids(session: Session) -> set[str]:
    return set(session.scalars(select(PendingStripeEvent.stripe_object_id).distinct()))


def due_pending_events(session: Session, now: int) -> list[PendingEvent]:
    """Every pending event of the objects that have at least one event due for a retry."""
    due_objects = select(PendingStripeEvent.stripe_object_id).where(
        PendingStripeEvent.next_attempt_at <= now
    )
    rows = session.scalars(
        select(PendingStripeEvent).where(PendingStripeEvent.stripe_object_id.in_(due_objects))
    )
    return [_pending(row) for row in rows]


def all_pending_events(session: Session) -> list[PendingEvent]:
    rows = session.scalars(
        select(PendingStripeEvent).order_by(PendingStripeEvent.stripe_event_created_timestamp)
    )
    return [_pending(row) for row in rows]


def _pending(row: PendingStripeEvent) -> PendingEvent:
    return PendingEvent(
        event=Event.from_dict(row.payload),
        object_id=row.stripe_object_id,
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
    )


# Waiting events (held behind a failed one) are never due by themselves: the failed event's
# backoff decides when the object is tried again.
WAITING = 2**62


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
    pending keeps its schedule.
    """
    insert = dialect_insert(session)
    for position, event in enumerate(events):
        failed_here = error is not None and position == 0
        statement = insert(PendingStripeEvent).values(
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
        update: dict[str, Any] = {"next_attempt_at": next_attempt_at}
        if failed_here:
            update["attempts"] = PendingStripeEvent.attempts + 1
            update["last_error"] = error
        session.execute(
            statement.on_conflict_do_update(index_elements=["stripe_event_id"], set_=update)
        )


def clear_pending(session: Session, event_ids: Collection[str]) -> None:
    column = PendingStripeEvent.stripe_event_id
    for condition in matching(session, column, event_ids):
        session.execute(delete(PendingStripeEvent).where(condition))


# -- named state values (cursor, times) ------------------------------------------------------


def read_state(session: Session, name: str) -> str | None:
    row = session.get(ReconcilerState, name)
    return row.value if row is not None else None


def read_int_state(session: Session, name: str) -> int | None:
    value = read_state(session, name)
    return int(value) if value is not None else None


def write_state(session: Session, name: str, value: str | int) -> None:
    insert = dialect_insert(session)
    statement = insert(ReconcilerState).values(name=name, value=str(value))
    session.execute(
        statement.on_conflict_do_update(index_elements=["name"], set_={"value": str(value)})
    )


def advance_cursor(session: Session, created: int) -> None:
    """The cursor only moves forward, whoever (poll, webhook) writes it."""
    current = read_int_state(session, CURSOR)
    if current is None or created > current:
        write_state(session, CURSOR, created)
