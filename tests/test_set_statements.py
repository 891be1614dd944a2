"""The reconciler's set-based statements: a batch of ids or rows travels as one JSON parameter,
and lookups by such a list stay on the column's index, on both engines, also in the generic
plan PostgreSQL uses once psycopg prepares a statement."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db import ledger, mirror
from collab_billing.db.models import (
    BillingCustomer,
    BillingSubscription,
    ProcessedStripeEvent,
    User,
)
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
    values = ledger.json_array(ids)
    if not ledger.is_postgres(session):
        sql = ledger._PROCESSED.sqlite.text.replace(":values", "?")
        rows = session.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", (values,))
        return "\n".join(str(row[-1]) for row in rows)
    # The plan of a prepared statement as psycopg would run it after five executions.
    sql = ledger._PROCESSED.postgres.text.replace(":values", "$1")
    session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    session.execute(text(f"PREPARE lookup AS {sql}"))
    assert "'" not in values  # a JSON array of ids, written into the statement as a literal
    explain = text(f"EXPLAIN EXECUTE lookup('{values}')")
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


def test_a_lookup_by_a_list_comes_back_in_one_row_on_sqlite(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """Its rows are the same on both engines; SQLite's driver steps to one row only (the rows
    packed in JSON), as each row it steps to lets go of the GIL and waits to take it back."""
    ids = fill_ledger(session_factory)
    wanted = [*ids[::100], "evt_missing"]
    with session_factory() as session:
        rows = ledger._PROCESSED.rows(session, wanted)
        result = ledger._PROCESSED.run(session, wanted)
        assert result is not None
        driver_rows = result.all()
    assert sorted(row[0] for row in rows) == ids[::100]
    assert len(driver_rows) == (1 if engine.dialect.name == "sqlite" else len(ids[::100]))


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


def subscription_rows(session: Session) -> dict[str, tuple[object, ...]]:
    def seconds(value: datetime | None) -> int | None:
        return None if value is None else int(value.replace(tzinfo=value.tzinfo or UTC).timestamp())

    rows = session.scalars(select(BillingSubscription)).all()
    return {
        row.stripe_subscription_id: (
            row.billing_customer_id,
            row.stripe_subscription_status,
            row.stripe_price_id,
            row.stripe_cancel_at_period_end,
            seconds(row.stripe_cancel_at),
            seconds(row.stripe_canceled_at),
            seconds(row.stripe_current_period_end),
            row.stripe_state_as_of,
        )
        for row in rows
    }


def three_customers(factory: sessionmaker[Session]) -> list[tuple[str, int]]:
    """(Stripe customer id, our id) of three new users' customers."""
    with factory() as session, session.begin():
        users = [User(github_user_id=n, github_login=f"user{n}") for n in range(3)]
        session.add_all(users)
        session.flush()
        customers = [BillingCustomer(user_id=u.id, stripe_customer_id=f"cus_{u.id}") for u in users]
        session.add_all(customers)
        session.flush()
        return [(c.stripe_customer_id, c.id) for c in customers]


def subscription_state(n: int, as_of: int, customer: str) -> mirror.SubscriptionState:
    return mirror.SubscriptionState(
        f"sub_{n:05d}",
        customer,
        ("active", "canceled")[n % 2],
        n % 3 == 0,
        1_800_000_000 + n if n % 4 else None,
        None if n % 5 else 1_700_000_000,
        1_750_000_000 + n,
        f"price_{n % 7}" if n % 6 else None,
        as_of,
    )


def row_of(state: mirror.SubscriptionState, known: dict[str, int]) -> tuple[object, ...]:
    """What `subscription_rows` reads back of a row written from `state`: its customer's id,
    status, price, `cancel_at_period_end`, the three times, and the second it is as of."""
    flag_and_times = state[3:7]
    return (
        known[state.stripe_customer_id],
        state.status,
        state.price_id,
        *flag_and_times,
        state.as_of,
    )


def test_subscription_rows_of_a_batch_are_inserted_or_overwritten(
    session_factory: sessionmaker[Session],
) -> None:
    """`upsert_subscriptions` writes every state it is given, new or not, as given: times
    (Unix seconds in the rows' JSON) read back as the same instants on both engines."""
    customers = three_customers(session_factory)
    known = dict(customers)
    first = [subscription_state(n, 10, customers[n % 3][0]) for n in range(0, 2_101)]
    again = [
        subscription_state(n, 20, customers[n % 3][0])._replace(status="past_due")
        for n in range(1_000, 2_600)
    ]
    with session_factory() as session, session.begin():
        mirror.upsert_subscriptions(session, first, known)
    with session_factory() as session, session.begin():
        mirror.upsert_subscriptions(session, again, known)
    newest = {s.stripe_subscription_id: s for s in first} | {
        s.stripe_subscription_id: s for s in again
    }
    with session_factory() as session:
        assert subscription_rows(session) == {
            sub_id: row_of(state, known) for sub_id, state in newest.items()
        }


@pytest.mark.parametrize("same_second", [False, True])
def test_states_are_written_only_over_rows_of_older_seconds(
    session_factory: sessionmaker[Session], same_second: bool
) -> None:
    """`upsert_newer` writes a state where its subscription has no row or a row of an older
    second, with `same_second` also over a row of its own second, never over a newer one;
    it names exactly the subscriptions it wrote."""
    customers = three_customers(session_factory)
    known = dict(customers)
    # Rows of seconds 100, 101 and 102, then states of second 101 for them and for new ones.
    rows = [subscription_state(n, 100 + n % 3, customers[n % 3][0]) for n in range(3_000)]
    states = [
        subscription_state(n, 101, customers[n % 3][0])._replace(status="past_due")
        for n in range(0, 4_000, 2)
    ]
    with session_factory() as session, session.begin():
        mirror.upsert_subscriptions(session, rows, known)
    with session_factory() as session, session.begin():
        written = mirror.upsert_newer(session, states, known, same_second)
    row_second = {s.stripe_subscription_id: s.as_of for s in rows}
    newer = [
        s
        for s in states
        if row_second.get(s.stripe_subscription_id, 0) < (102 if same_second else 101)
    ]
    assert written == {s.stripe_subscription_id for s in newer}
    assert 0 < len(newer) < len(states)
    expected = {s.stripe_subscription_id: s for s in rows} | {
        s.stripe_subscription_id: s for s in newer
    }
    with session_factory() as session:
        assert subscription_rows(session) == {
            sub_id: row_of(state, known) for sub_id, state in expected.items()
        }


def test_customer_links_of_a_batch_are_taken_in_order(
    session_factory: sessionmaker[Session],
) -> None:
    """`link_customers_if_free` links a pair only when neither its user nor its customer is
    linked already, by an existing row or by an earlier pair of the same call."""
    with session_factory() as session, session.begin():
        users = [User(github_user_id=n, github_login=f"user{n}") for n in range(5)]
        session.add_all(users)
        session.flush()
        session.add(BillingCustomer(user_id=users[4].id, stripe_customer_id="cus_had"))
        u = [user.id for user in users]
    links = [
        (u[1], "cus_a"),  # linked
        (u[1], "cus_b"),  # the user was linked by the pair before
        (u[2], "cus_a"),  # the customer was linked by the first pair
        (u[3], "cus_c"),  # linked
        (u[4], "cus_d"),  # the user had a customer already
        (u[0], "cus_had"),  # the customer belongs to another user
    ]
    with session_factory() as session, session.begin():
        linked = mirror.link_customers_if_free(session, links)
    with session_factory() as session:
        rows = session.execute(select(BillingCustomer.stripe_customer_id, BillingCustomer.user_id))
        by_customer = {cid: user_id for cid, user_id in rows}
        ids = {
            cid: id_
            for cid, id_ in session.execute(
                select(BillingCustomer.stripe_customer_id, BillingCustomer.id)
            )
        }
    assert by_customer == {"cus_a": u[1], "cus_c": u[3], "cus_had": u[4]}
    assert linked == {"cus_a": ids["cus_a"], "cus_c": ids["cus_c"]}
