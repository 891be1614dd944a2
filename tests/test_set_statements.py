"""The reconciler's set-based statements: a batch of ids or rows travels as one JSON parameter,
and lookups by such a list stay on the column's index, on both engines, also in the generic
plan PostgreSQL uses once psycopg prepares a statement."""

from __future__ import annotations

import re

from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db import ledger
from collab_billing.db.models import ProcessedStripeEvent
from collab_billing.stripe_objects import Event

ROWS = 20_000


def fill_ledger(factory: sessionmaker[Session]) -> list[str]:
    ids = [f"evt_{n:08d}" for n in range(ROWS)]
    with factory() as session, session.begin():
        session.execute(
            insert(ProcessedStripeEvent),
            [
                {"stripe_event_id": id_, "stripe_event_type": "customer.updated"}
                | {"stripe_event_created_timestamp": 1_700_000_000 + n}
                for n, id_ in enumerate(ids)
            ],
        )
    return ids


def plan_of_processed_ids(session: Session, ids: list[str]) -> str:
    column = ProcessedStripeEvent.stripe_event_id
    query = select(column).where(next(ledger.matching(session, column, ids)))
    compiled = query.compile(session.get_bind())
    if not ledger.is_postgres(session):
        explain = f"EXPLAIN QUERY PLAN {compiled}"
        rows = session.connection().exec_driver_sql(explain, tuple(compiled.params.values()))
        return "\n".join(str(row[-1]) for row in rows)
    # The plan of a prepared statement as psycopg would run it after five executions.
    sql = re.sub(r"%\(\w+\)s", "$1", str(compiled))
    session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    session.execute(text(f"PREPARE lookup AS {sql}"))
    (param,) = compiled.params.values()
    assert "'" not in param  # a JSON array of ids, written into the statement as a literal
    explain = text(f"EXPLAIN EXECUTE lookup('{param}')")
    plan = "\n".join(row[0] for row in session.execute(explain))
    session.execute(text("DEALLOCATE lookup"))
    return plan


def test_a_list_of_ids_is_looked_up_through_the_index(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    ids = fill_ledger(session_factory)
    wanted = [*ids[::1000], "evt_missing"]
    with session_factory() as session, session.begin():
        if ledger.is_postgres(session):
            session.execute(text("ANALYZE processed_stripe_events"))
        plan = plan_of_processed_ids(session, wanted)
        found = ledger.processed_ids(session, wanted)
    assert found == set(ids[::1000])
    if engine.dialect.name == "postgresql":
        assert "Index" in plan and "Seq Scan on processed_stripe_events" not in plan, plan
    else:
        assert "SEARCH processed_stripe_events USING" in plan, plan


def test_ledger_rows_of_a_batch_are_written_once(session_factory: sessionmaker[Session]) -> None:
    """`claim` writes the rows that are not there and names those that were (processed
    already, so not to be applied again), in one statement."""
    events = [
        Event.from_dict({"id": f"evt_{n}", "type": "customer.created", "created": n, "data": {}})
        for n in range(1, 2_001)
    ]
    with session_factory() as session, session.begin():
        assert ledger.claim(session, events[:1_000:7]) == set()
    with session_factory() as session, session.begin():
        done = ledger.claim(session, events)
    assert done == {event.id for event in events[:1_000:7]}
    with session_factory() as session:
        rows = session.execute(
            select(
                ProcessedStripeEvent.stripe_event_id,
                ProcessedStripeEvent.stripe_event_type,
                ProcessedStripeEvent.stripe_event_created_timestamp,
            )
        ).all()
    assert sorted(rows, key=lambda row: row[2]) == [
        (event.id, event.type, event.created) for event in events
    ]


def test_the_cursor_only_moves_forward(session_factory: sessionmaker[Session]) -> None:
    seen = []
    for created in (1_700_000_500, 1_700_000_100, 1_700_000_900, 999):
        with session_factory() as session, session.begin():
            ledger.advance_cursor(session, created)
        with session_factory() as session:
            seen.append(ledger.read_int_state(session, ledger.CURSOR))
    assert seen == [1_700_000_500, 1_700_000_500, 1_700_000_900, 1_700_000_900]
