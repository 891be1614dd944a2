"""The reconciler's bookkeeping: processed events, events waiting for a retry, and the cursor.

The statements of a drain's every batch (here and in `mirror`) run on the session's connection,
as Core: the ORM's execution and result machinery (autoflush, ORM rows) cost more than some of
the statements themselves (7% of a drain of 100k events on SQLite). They read and write no ORM
object that could be waiting to be flushed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import CursorResult, Engine, TextClause, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from collab_billing.db.models import PendingStripeEvent, ReconcilerState
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


@dataclass(frozen=True)
class ListStatement:
    """A statement about the rows whose `key` is one of a list of values, the list travelling
    as one JSON array parameter (`:values`), turned into rows server-side (`json_each` on
    SQLite, `json_array_elements_text` on PostgreSQL); written out once per engine.

    An `IN` of thousands of bound parameters costs more to build (SQLAlchemy renders each one,
    per execution) and to plan than to run, and psycopg dumps a list parameter element by
    element in Python (5 ms of CPU for 2,000 ids, against 0.3 ms for the JSON text). The
    semi-join stays on the key's index, also in the generic plan of a prepared statement
    (`= ANY(:array)` became a sequential scan). And as text, not a Core `select` built per
    call: building one and finding its compiled form (~0.6 ms of CPU) cost more than running
    it for a webhook delivery's few ids, several times per delivery."""

    sqlite: TextClause
    postgres: TextClause
    packed: bool = False  # on SQLite, the rows come back as one JSON array in one row

    @classmethod
    def of(cls, sql: str, key: str, element: str = "text") -> ListStatement:
        """`sql` with `{key_in_values}` where the condition goes; `element` is the key's
        PostgreSQL type."""
        return cls(
            text(sql.format(key_in_values=_sqlite_key_in_values(key))),
            text(sql.format(key_in_values=_postgres_key_in_values(key, element))),
        )

    @classmethod
    def select(cls, columns: str, table: str, key: str, element: str = "text") -> ListStatement:
        """`SELECT columns FROM table` of the rows whose `key` is among the values.

        On SQLite the rows come back packed in one row, as a JSON array of arrays: the driver
        lets go of the GIL at every row it steps to and waits to get it back, and a drain's
        read-ahead thread, running Python meanwhile, made that wait longer than the lookup
        (2,000 rows a batch: a million-event drain ~14% faster packed, `bench.packed_rows`)."""
        rows_of = f"FROM {table} WHERE"
        packed = f"json_group_array(json_array({columns}))"
        return cls(
            text(f"SELECT {packed} {rows_of} {_sqlite_key_in_values(key)}"),
            text(f"SELECT {columns} {rows_of} {_postgres_key_in_values(key, element)}"),
            packed=True,
        )

    def rows(self, session: Session, values: Collection[Any]) -> list[Sequence[Any]]:
        """The rows it returns for `values` (none for no values), as tuples or lists."""
        result = self.run(session, values)
        if result is None:
            return []
        if self.packed and not is_postgres(session):
            rows: list[Sequence[Any]] = orjson.loads(result.scalar_one())
            return rows
        return list(result)

    def run(self, session: Session, values: Collection[Any]) -> CursorResult[Any] | None:
        if not values:
            return None
        statement = self.postgres if is_postgres(session) else self.sqlite
        return session.connection().execute(statement, {"values": json_array(list(values))})


def _sqlite_key_in_values(key: str) -> str:
    return f"{key} IN (SELECT value FROM json_each(:values))"


def _postgres_key_in_values(key: str, element: str) -> str:
    # `unnest(ARRAY(...))` rather than the set of JSON elements directly: the planner expects
    # 10 rows of an unnest and probes the index for each, where it expects 100 of a JSON
    # function and hashes them against a scan of the whole table.
    elements = f"CAST(json_array_elements_text(CAST(:values AS json)) AS {element})"
    return f"{key} IN (SELECT unnest(ARRAY(SELECT {elements})))"


def json_array(values: Sequence[Any]) -> str:
    """Values (or rows of values) as one JSON parameter: for `json_each` on SQLite, whose
    rows are read back with `value ->> index`, and for `json_array_elements` on PostgreSQL,
    read with `row ->> index`."""
    return orjson.dumps(values).decode()


_PROCESSED = ListStatement.select("stripe_event_id", "processed_stripe_events", "stripe_event_id")


def processed_ids(session: Session, event_ids: Collection[str]) -> set[str]:
    return {row[0] for row in _PROCESSED.rows(session, event_ids)}


_CLAIM_POSTGRES = text(
    "INSERT INTO processed_stripe_events (stripe_event_id, stripe_event_type, "
    "stripe_event_created_timestamp) SELECT row ->> 0, row ->> 1, CAST(row ->> 2 AS bigint) "
    "FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS row "
    "ON CONFLICT (stripe_event_id) DO NOTHING RETURNING stripe_event_id"
)
_CLAIM_SQLITE = text(
    "INSERT INTO processed_stripe_events (stripe_event_id, stripe_event_type, "
    "stripe_event_created_timestamp) SELECT value ->> 0, value ->> 1, value ->> 2 "
    "FROM json_each(:rows) WHERE true ON CONFLICT (stripe_event_id) DO NOTHING"
)


def claim(session: Session, events: Sequence[Event]) -> set[str]:
    """Write the ledger rows of `events`, to be applied in this transaction; returns the ids
    of those processed already (their rows were there), which must not be applied again.

    One insert, whose rows are built server-side from one JSON array (see `ListStatement`):
    per-row parameters cost more in SQLAlchemy and the driver than the writes themselves, and
    the driver's executemany lets go of the GIL, and waits to get it back, at every row. On
    PostgreSQL its `RETURNING` tells which rows were there, also when another transaction
    inserts some at the same time. On SQLite, whose driver would also step through the
    returned rows one at a time, a packed lookup first tells them: no other writer can add a
    row between the two, the transaction holds the write lock (`BEGIN IMMEDIATE`)."""
    if not events:
        return set()
    rows = json_array([(event.id, event.type, event.created) for event in events])
    connection = session.connection()
    if is_postgres(session):
        inserted = set(connection.scalars(_CLAIM_POSTGRES, {"rows": rows}).all())
        return {event.id for event in events} - inserted
    done = processed_ids(session, [event.id for event in events])
    connection.execute(_CLAIM_SQLITE, {"rows": rows})
    return done


# -- pending (failed or waiting) events --------------------------------------------------


@dataclass(frozen=True)
class PendingEvent:
    event: Event
    object_id: str
    attempts: int
    last_error: str | None
    next_attempt_at: int


_PENDING_OBJECTS = text("SELECT DISTINCT stripe_object_id FROM pending_stripe_events")


def pending_object_ids(session: Session) -> set[str]:
    return set(session.connection().scalars(_PENDING_OBJECTS))


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


_CLEAR_PENDING = ListStatement.of(
    "DELETE FROM pending_stripe_events WHERE {key_in_values}", "stripe_event_id"
)


def clear_pending(session: Session, event_ids: Collection[str]) -> None:
    _CLEAR_PENDING.run(session, event_ids)


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


# The same text on both engines; written out rather than built by the ORM at every batch
# (building and caching-key the statement cost more than running it).
_ADVANCE_CURSOR = text(
    "INSERT INTO reconciler_state (name, value) VALUES (:name, :value) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = CURRENT_TIMESTAMP "
    "WHERE CAST(reconciler_state.value AS BIGINT) < CAST(excluded.value AS BIGINT)"
)


def advance_cursor(session: Session, created: int) -> None:
    """The cursor only moves forward, whoever (poll, webhook) writes it."""
    session.connection().execute(_ADVANCE_CURSOR, {"name": CURSOR, "value": str(created)})
