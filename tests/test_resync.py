"""`resync` from Stripe's list endpoints against a populated emulator: more than a page of
everything, idempotent, rate-limit aware, per user, from the CLI, and the cursor-too-old path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing import metrics
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.db.models import BillingCustomer, BillingSubscription, User
from collab_billing.mirror import customers as customer_rows
from collab_billing.reconcile import ledger
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.state import outbox
from collab_billing.stripe_gateway import StripeGateway
from tests.reconcile_helpers import assert_matches_stripe
from tests.servers import free_port
from tests.stripe_helpers import EMULATOR_KEY, Emulator

CUSTOMERS = 230  # three pages of customers and of subscriptions
MATCHED = 210  # users we know; the other customers are counted and skipped


def populate(emulator: Emulator, factory: sessionmaker[Session]) -> dict[str, Any]:
    with factory() as session, session.begin():
        session.execute(
            insert(User),
            [{"github_user_id": n, "github_login": f"user{n}"} for n in range(1, MATCHED + 1)],
        )
    result: dict[str, Any] = emulator.control(
        "POST",
        "generate",
        {"customers": CUSTOMERS, "events_per_customer": 4, "first_github_user_id": 1, "seed": 3},
    )
    return result


def snapshot(factory: sessionmaker[Session]) -> dict[str, tuple[Any, ...]]:
    with factory() as session:
        rows = session.execute(
            select(BillingSubscription, BillingCustomer.stripe_customer_id, User.github_user_id)
            .join(BillingCustomer, BillingSubscription.billing_customer_id == BillingCustomer.id)
            .join(User, BillingCustomer.user_id == User.id)
        )
        return {
            sub.stripe_subscription_id: (
                customer_id,
                github_user_id,
                sub.stripe_subscription_status,
                sub.stripe_cancel_at_period_end,
                sub.stripe_cancel_at,
                sub.stripe_current_period_end,
                sub.stripe_state_as_of,
            )
            for sub, customer_id, github_user_id in rows
        }


def assert_matches_emulator(emulator: Emulator, factory: sessionmaker[Session]) -> None:
    """Exactly the subscriptions of the customers whose metadata names a known user, linked to
    that user, with Stripe's status and cancellation."""
    state = emulator.state()
    owners = {c["id"]: int(c["metadata"]["github_user_id"]) for c in _list(state["customers"])}
    expected = {
        s["id"]: s for s in _list(state["subscriptions"]) if owners[s["customer"]] <= MATCHED
    }
    rows = snapshot(factory)
    assert set(rows) == set(expected)
    for sub_id, sub in expected.items():
        customer_id, github_user_id, status, cancel_at_period_end, *_ = rows[sub_id]
        assert (customer_id, github_user_id) == (sub["customer"], owners[sub["customer"]])
        assert (status, cancel_at_period_end) == (sub["status"], sub["cancel_at_period_end"])


def _list(value: Any) -> list[dict[str, Any]]:
    return list(value.values()) if isinstance(value, dict) else list(value)


def test_resync_rebuilds_a_populated_account_and_is_idempotent(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, session_factory: Any
) -> None:
    populate(emulator, session_factory)
    emulator.control("POST", "faults", {"rate": 0.5, "statuses": [429], "retry_after": 0,
                                        "seed": 5, "path_prefix": "/v1/"})  # fmt: skip
    seen: list[tuple[str, int | str]] = []
    ticks: list[tuple[str, int]] = []
    gateway = StripeGateway(stripe_settings, observer=lambda *request: seen.append(request))
    report = resync(session_factory, gateway, progress=lambda *t: ticks.append(t))
    emulator.control("DELETE", "faults")
    assert 429 in {status for _, status in seen}, "Stripe said 429 and resync waited"
    pages = {op: sum(1 for o, status in seen if o == op and status == 200) for op, _ in seen}
    # Subscriptions and customers are listed twice: for themselves, and for their discounts
    # (Stripe has no list of discounts: `expand[]=data.discounts`, a customer's `discount`).
    assert pages["customers.list"] == 2 * 3 and pages["subscriptions.list"] == 2 * 3
    assert report.customers_seen == CUSTOMERS and report.customers_linked == MATCHED
    assert report.seen["subscription"] == CUSTOMERS
    assert report.subscriptions_written == MATCHED
    assert ("customers", CUSTOMERS) in ticks and ("subscriptions", CUSTOMERS) in ticks
    assert_matches_emulator(emulator, session_factory)
    statuses = {row[2] for row in snapshot(session_factory).values()}
    assert len(statuses) > 1, "the generated account should mix statuses"

    # The cursor restarts from the newest event, and the poll takes over from there.
    newest = max(e["created"] for e in emulator.all_events())
    with session_factory() as session:
        assert ledger.read_int_state(session, ledger.CURSOR) == newest
        assert ledger.read_int_state(session, ledger.LAST_RESYNC_AT) >= time.time() - 60

    first = snapshot(session_factory)
    again = resync(session_factory, StripeGateway(stripe_settings))
    assert again.customers_linked == 0
    assert snapshot(session_factory) == first


def test_resync_throttles_to_the_configured_rate(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, session_factory: Any
) -> None:
    populate(emulator, session_factory)
    emulator.control("DELETE", "requests")
    gateway = StripeGateway(stripe_settings, requests_per_second=100)
    started = time.monotonic()
    resync(session_factory, gateway)
    elapsed = time.monotonic() - started
    requests = emulator.control("GET", "requests")["total"]
    # The throttle's burst is a fifth of the rate; the rest at 100 per second at most.
    assert requests > 200 and elapsed >= (requests - 20) / 100


def test_a_slow_resync_counts_from_its_start(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, session_factory: Any
) -> None:
    """A resync applies what existed when it began, not when it ended: the lag counts from
    its start (a long resync once reported no lag at its end)."""
    emulator.price()
    emulator.control("POST", "faults", {"latency_ms": 400})  # a far Stripe
    began = time.time()
    resync(session_factory, StripeGateway(stripe_settings))
    assert time.time() - began >= 2
    with session_factory() as session:
        assert ledger.read_int_state(session, ledger.LAST_DRAIN_AT) <= began + 1  # in seconds


def test_a_poll_too_old_for_the_event_window_resyncs(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, session_factory: Any
) -> None:
    """Changes whose events have left Stripe's 30-day window still reach the database."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    with session_factory() as session, session.begin():
        users = [{"github_user_id": n, "github_login": f"u{n}"} for n in (1, 2, 3)]
        session.execute(insert(User), users)
    price = stripe_settings.stripe_price_id or ""
    subs = {}
    for n in (1, 2, 3):
        customer = emulator.sdk.v1.customers.create(params={"metadata": {"github_user_id": str(n)}})
        subs[n] = emulator.sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": price}]}
        )
    reconciler.drain()
    assert_matches_stripe(emulator, session_factory)
    with session_factory() as session:
        gone_customer = session.scalars(
            select(BillingCustomer.stripe_customer_id).where(BillingCustomer.user_id == 3)
        ).one()

    # While the service is down: a cancellation, a dunning status, a deleted customer...
    emulator.sdk.v1.subscriptions.cancel(subs[1].id)
    emulator.set_status(subs[2].id, "past_due")
    emulator.sdk.v1.customers.delete(gone_customer)
    # ...and then more than 30 days pass: those events cannot be read any more.
    emulator.control("POST", "clock/advance", {"seconds": 31 * 86_400})
    types = {e["type"] for e in emulator.all_events()}
    assert "customer.deleted" not in types and "customer.subscription.deleted" not in types
    with session_factory() as session, session.begin():
        ledger.write_state(session, ledger.LAST_DRAIN_AT, int(time.time()) - 31 * 86_400)

    resyncs = metrics.RESYNCS.labels("events_expired")
    resyncs_before = resyncs._value.get()
    reconciler.drain()
    assert_matches_stripe(emulator, session_factory)
    with session_factory() as session:
        assert ledger.read_int_state(session, ledger.LAST_RESYNC_AT) >= time.time() - 60
        deleted = session.scalars(
            select(BillingCustomer.stripe_deleted_at).where(
                BillingCustomer.stripe_customer_id == gone_customer
            )
        ).one()
    assert deleted is not None, "the customer deleted meanwhile is a tombstone"
    assert resyncs._value.get() == resyncs_before + 1

    # Polling resumes from the resync's cursor: a later change arrives as an event.
    emulator.set_status(subs[2].id, "active")
    report = reconciler.drain()
    assert report.stats.total("applied") >= 1
    assert_matches_stripe(emulator, session_factory)


def test_resync_of_one_user(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, session_factory: Any
) -> None:
    populate(emulator, session_factory)
    gateway = StripeGateway(stripe_settings)
    report = resync(session_factory, gateway, github_user_id=7)
    assert (report.customers_linked, report.subscriptions_written) == (1, 1)
    [(customer_id, github_user_id, *_)] = snapshot(session_factory).values()
    assert github_user_id == 7
    with session_factory() as session:
        # A per-user resync leaves the cursor alone.
        assert ledger.read_int_state(session, ledger.CURSOR) is None
    again = resync(session_factory, gateway, github_user_id=7)
    # Its customer, linked and naming it, counted once (it was counted twice).
    assert (again.customers_linked, again.customers_seen) == (0, 1)
    assert customer_id.startswith("cus_")


@pytest.mark.parametrize("args", [[], ["--github-user-id", "3", "--requests-per-second", "50"]])
def test_the_resync_command(
    engine: Engine, emulator: Emulator, session_factory: Any, database_url: str, args: list[str]
) -> None:
    populate(emulator, session_factory)
    env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_API_KEY": EMULATOR_KEY,
           "STRIPE_API_BASE": emulator.url, "STRIPE_REQUESTS_PER_SECOND": "1000"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "resync", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "resync done" in result.stdout
    # Not a terminal: plain JSON log lines instead of a progress bar.
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    progress = [line for line in lines if line["message"] == "resync progress"]
    assert progress and all("count" in line for line in progress)
    assert "\r" not in result.stderr and "\x1b[" not in result.stderr
    assert EMULATOR_KEY not in result.stderr + result.stdout
    expected = 1 if args else MATCHED
    assert len(snapshot(session_factory)) == expected


def test_the_resync_command_says_which_reads_failed_and_exits_1(
    engine: Engine, emulator: Emulator, session_factory: Any, database_url: str
) -> None:
    """A customer whose entitlements cannot be read does not stop the resync, but the
    operator who ran it is told, and a script sees a failure."""
    populate(emulator, session_factory)
    fault = {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/entitlements"}
    emulator.control("POST", "faults", fault)
    env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_API_KEY": EMULATOR_KEY,
           "STRIPE_API_BASE": emulator.url, "STRIPE_REQUESTS_PER_SECOND": "1000",
           "STRIPE_MAX_NETWORK_RETRIES": "0"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "resync"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "resync done" in result.stdout
    [message] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "entitlement" in message and "resync" in message
    assert int(message.split("could not read ")[1].split()[0]) > 0
    assert len(snapshot(session_factory)) == MATCHED  # the rest was still rebuilt
    assert EMULATOR_KEY not in result.stderr + result.stdout


@pytest.mark.parametrize("fault", ["unreachable", "failing"])
def test_the_resync_command_without_stripe_is_one_line_and_exit_1(
    engine: Engine, emulator: Emulator, database_url: str, fault: str
) -> None:
    base = f"http://127.0.0.1:{free_port()}" if fault == "unreachable" else emulator.url
    emulator.control("POST", "faults", {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/"})
    env = {**os.environ, "DATABASE_URL": database_url, "STRIPE_API_KEY": EMULATOR_KEY,
           "STRIPE_API_BASE": base, "STRIPE_MAX_NETWORK_RETRIES": "0"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "resync"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [message] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    kind = "api_connection_error" if fault == "unreachable" else "api_error"
    assert message.startswith("error: resync stopped: Stripe ") and kind in message
    assert EMULATOR_KEY not in result.stderr + result.stdout


@pytest.mark.postgres_only
def test_a_first_sync_plans_each_lookup_for_its_ids(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, database_url: str
) -> None:
    """A first sync fills tables that were empty, page by page, with the same lookups by ids
    run again and again. PostgreSQL, left to itself, would keep one generic plan for such a
    statement, made while its table was nearly empty: a whole-table scan for every lookup
    once the table is large, and a first sync slowing with the square of the account."""
    customers = 3_000  # pages enough that a lookup runs past PostgreSQL's first 5 custom plans
    with engine.begin() as connection:
        connection.execute(
            insert(User),
            [{"github_user_id": n, "github_login": f"user{n}"} for n in range(1, customers + 1)],
        )
    emulator.control(
        "POST", "generate",
        {"customers": customers, "events_per_customer": 2, "first_github_user_id": 1},
    )  # fmt: skip
    fresh = make_engine(database_url, pool_size=1, max_overflow=0)  # one connection: its plans
    # The plans of the statements prepared so far, after each statement: psycopg drops them
    # at every rollback (a read-only session's end), so they are looked at as the sync goes.
    # (A statement without parameters has one plan, generic: there is nothing to plan for.)
    plans: dict[str, tuple[int, int]] = {}

    def look(connection: Connection, *_args: Any) -> None:
        with connection.connection.dbapi_connection.cursor() as probe:  # type: ignore[union-attr]
            probe.execute(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            plans.update((row[0], (row[1], row[2])) for row in probe.fetchall())

    event.listen(fresh, "after_cursor_execute", look)
    try:
        report = resync(make_session_factory(fresh), StripeGateway(stripe_settings))
    finally:
        fresh.dispose()
    assert report.customers_linked == customers
    with_ids = [counts for statement, counts in plans.items() if "$1" in statement]
    generic = sum(generic for generic, _ in with_ids)
    custom = sum(custom for _, custom in with_ids)
    assert custom > 0 and generic == 0, (generic, custom)


@pytest.mark.postgres_only
def test_a_batch_looks_its_customers_up_by_index_in_a_large_account(engine: Engine) -> None:
    """Each batch looks up its customers by their Stripe ids, 500 at a time. At PostgreSQL's
    default cost of a random page (a spinning disk's), a table of 100,000 customers would be
    read whole for each lookup: several times slower than its index, the table being cached
    as a service's working set is."""
    accounts = 100_000
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (github_user_id, github_login)"
                " SELECT n, 'user' || n FROM generate_series(1, :accounts) AS n"
            ),
            {"accounts": accounts},
        )
        connection.execute(
            text(
                "INSERT INTO billing_customers (user_id, stripe_customer_id)"
                " SELECT id, 'cus_' || md5(github_user_id::text) FROM users"
            )
        )
        connection.execute(text("ANALYZE users, billing_customers"))
        ids = list(
            connection.scalars(
                text("SELECT stripe_customer_id FROM billing_customers ORDER BY random() LIMIT 500")
            )
        )
    lookup = str(customer_rows._KNOWN.compile(dialect=engine.dialect))  # the batch's own statement
    with Session(engine) as session:
        assert len(customer_rows.known(session, ids)) == len(ids)
        [[plan]] = session.connection().exec_driver_sql(
            "EXPLAIN (FORMAT JSON) " + lookup, {"ids": ids}
        )
    assert "Seq Scan" not in json.dumps(plan), plan


@pytest.mark.postgres_only
def test_a_refresh_finds_the_stale_documents_by_index_whatever_the_statistics(
    engine: Engine,
) -> None:
    """Statistics gathered while a catch-up had most documents marked stale (by autovacuum,
    or by the drain) must not have each refresh walk the whole table for the few left."""
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO users (github_user_id, github_login)"
            " SELECT n, 'user' || n FROM generate_series(1, 100000) AS n",
            "INSERT INTO billing_states (user_id, version, stale) SELECT id, 0, true FROM users",
            "ANALYZE billing_states",
            "UPDATE billing_states SET stale = false WHERE user_id > 300",
        ):
            connection.execute(text(statement))
    lookup = str(outbox._STALE.compile(dialect=engine.dialect))
    with Session(engine) as session:
        assert len(session.scalars(outbox._STALE, {"limit": 500}).all()) == 300
        [[plan]] = session.connection().exec_driver_sql(
            "EXPLAIN (FORMAT JSON) " + lookup, {"limit": 500}
        )
    assert "ix_billing_states_stale_user_id" in json.dumps(plan), plan
