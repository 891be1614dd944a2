"""Faults: Stripe failing, slow or dropping calls loses nothing and applies nothing twice; a
failing object is parked with its error while the others go on."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, delete, text

from collab_billing import billing
from collab_billing.cli import print_status
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.engine import make_engine
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.db.models import UnmatchedStripeCustomer
from collab_billing.reconcile import ledger
from collab_billing.reconcile.leader import (
    ADVISORY_LOCK_KEY,
    HELD_CHECK_SECONDS,
    HOLDER_QUERY,
    LeaderLock,
    start_in_background,
)
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.conftest import clear_tables
from tests.emulator.conftest import CARD
from tests.ops_helpers import close_database, wait_until
from tests.reconcile_helpers import (
    assert_matches_stripe,
    generate_backlog,
    processed_event_ids,
    relevant_event_ids,
)
from tests.servers import free_port
from tests.stripe_helpers import Emulator


def make_reconciler(settings: Settings, engine: Engine, **overrides: object) -> Reconciler:
    settings = settings.model_copy(update=overrides)
    return Reconciler(settings, engine, StripeGateway(settings))


def drain_until_done(reconciler: Reconciler, attempts: int = 40) -> int:
    """Like the loop does: a failed poll is retried at the next one. Returns the failures."""
    failures = 0
    for _ in range(attempts):
        try:
            reconciler.drain()
        except Exception:
            failures += 1
            continue
        return failures
    raise AssertionError("never completed a poll")


def test_errors_and_dropped_connections_lose_nothing(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    reconciler = make_reconciler(stripe_settings, engine, stripe_max_network_retries=2)
    generate_backlog(emulator, reconciler.factory, customers=60, per_customer=8)
    emulator.control(
        "POST",
        "faults",
        {"rate": 0.3, "statuses": [429, 500], "drop_rate": 0.1, "retry_after": 0, "seed": 7},
    )
    failures = drain_until_done(reconciler)
    # Objects whose Stripe reads failed were parked for a retry with backoff: once Stripe
    # is well again and the backoff has run out, the next poll applies them.
    emulator.control("DELETE", "faults")
    reconciler.poller.clock = reconciler.applier.clock = lambda: time.time() + 3600
    reconciler.drain()
    with reconciler.factory() as session:
        assert ledger.all_pending_events(session) == []
    processed = processed_event_ids(reconciler.factory)
    assert len(processed) == len(set(processed))
    assert set(processed) == relevant_event_ids(emulator)
    assert assert_matches_stripe(emulator, reconciler.factory) == 60
    faults = emulator.control("GET", "faults")
    assert faults is not None
    print(f"polls that failed under faults: {failures}")


def test_timeouts_are_retried(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    reconciler = make_reconciler(
        stripe_settings, engine, stripe_timeout_seconds=0.3, stripe_max_network_retries=3
    )
    generate_backlog(emulator, reconciler.factory, customers=5, per_customer=4)
    emulator.control(
        "POST",
        "faults",
        {
            "latency_ms": 1000,
            "rate": 1.0,
            "statuses": [500],
            "count": 2,
            "path_prefix": "/v1/events",
        },
    )
    drain_until_done(reconciler)
    assert set(processed_event_ids(reconciler.factory)) == relevant_event_ids(emulator)


def test_a_failing_object_is_parked_while_others_go_on(
    emulator: Emulator,
    stripe_settings: Settings,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reconciler = make_reconciler(stripe_settings, engine)
    # A frozen clock: the retry backoff does not run out between the first polls.
    frozen = time.time()
    reconciler.poller.clock = reconciler.applier.clock = lambda: frozen
    factory = reconciler.factory
    price = stripe_settings.stripe_price_id or ""
    with factory() as session, session.begin():
        queries.upsert_user(session, 1, "one", None)
        queries.upsert_user(session, 2, "two", None)
    stranger = emulator.sdk.v1.customers.create(params={"email": "one@example.com"})
    # Its first subscription sets its currency (a `customer.updated`, which would say again that
    # the customer is no user's): the failing one below changes nothing of the customer.
    emulator.sdk.v1.subscriptions.create(
        params={"customer": stranger.id, "items": [{"price": price}]}
    )
    reconciler.drain()
    # User 1's customer has no metadata yet, and its events were seen before this database
    # remembered unmatched customers: applying its subscription needs a read of the customer
    # from Stripe, and that read fails.
    forget_unmatched_customers(factory)
    failing = emulator.sdk.v1.subscriptions.create(
        params={"customer": stranger.id, "items": [{"price": price}]}
    )
    known = emulator.sdk.v1.customers.create(params={"metadata": {"github_user_id": "2"}, **CARD})
    emulator.sdk.v1.subscriptions.create(params={"customer": known.id, "items": [{"price": price}]})
    emulator.control(
        "POST", "faults", {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/customers/"}
    )
    reconciler.drain()

    with factory() as session:
        pending = ledger.all_pending_events(session)
        # The subscription and its first invoice: both need their customer read.
        failed = [p for p in pending if p.last_error]  # each object's first; the rest wait
        assert {p.object_id for p in failed} == {failing.id, failing.latest_invoice}
        assert all(p.attempts == 1 and "api_error" in (p.last_error or "") for p in failed)
        assert queries.get_user_by_github_user_id(session, 2) is not None
    rows = queries_by_user(factory, 2)
    assert [r.stripe_subscription_status for r in rows] == ["active"]

    # A later event of the failing subscription waits behind the failure.
    emulator.sdk.v1.subscriptions.update(failing.id, params={"cancel_at_period_end": True})
    reconciler.drain()
    with factory() as session:
        pending = ledger.all_pending_events(session)
    assert len([p for p in pending if p.object_id == failing.id and not p.last_error]) == 1
    print_status(engine)
    status = capsys.readouterr().out
    assert failing.id in status and "failed 1x" in status and "waiting behind" in status

    # Fixed: faults gone, the customer now names its user; after the backoff it all applies.
    emulator.control("DELETE", "faults")
    emulator.sdk.v1.customers.update(stranger.id, params={"metadata": {"github_user_id": "1"}})
    reconciler.poller.clock = reconciler.applier.clock = lambda: frozen + 3600
    reconciler.drain()
    with factory() as session:
        assert ledger.all_pending_events(session) == []
    [row] = queries_by_user(factory, 1)
    assert row.stripe_subscription_id == failing.id
    assert row.stripe_cancel_at_period_end is True


def queries_by_user(factory, github_user_id):  # type: ignore[no-untyped-def]
    with factory() as session:
        user = queries.get_user_by_github_user_id(session, github_user_id)
        return list(queries.list_subscriptions_of_user(session, user.id))


def forget_unmatched_customers(factory):  # type: ignore[no-untyped-def]
    with factory() as session, session.begin():
        session.execute(delete(UnmatchedStripeCustomer))


def user_with_a_customer(reconciler: Reconciler) -> str:
    """User 1 and their Stripe customer (made now); returns the customer's id."""
    factory = reconciler.factory
    with factory() as session, session.begin():
        queries.upsert_user(session, 1, "one", None)
    return billing.ensure_customer(factory, reconciler.gateway, billing.find_user(factory, 1))


@pytest.mark.postgres_only
def test_the_reconciler_outlives_a_database_outage(
    stripe_settings: Settings, emulator: Emulator, own_database: str
) -> None:
    """The database refuses connections for longer than any retry (its backends terminated,
    new connections refused): the loop keeps trying, gives up the leadership, and once the
    database is back it leads again and applies what happened meanwhile, by itself."""
    engine = make_engine(own_database)
    upgrade_to_head(engine)
    settings = stripe_settings.model_copy(
        update={
            "database_url": own_database,
            "reconcile_interval_seconds": 0.2,
            "reconcile_safety_interval_seconds": 1.0,
        }
    )
    reconciler = make_reconciler(settings, engine)
    factory = reconciler.factory
    customer = user_with_a_customer(reconciler)
    thread, stop = start_in_background(reconciler.run, "reconciler")
    try:
        wait_until(lambda: metric("collab_billing_reconciler_leader") == 1, what="leadership")
        close_database(own_database, allow=False)
        time.sleep(6)
        assert thread.is_alive()
        assert metric("collab_billing_reconciler_leader") == 0
        price = settings.stripe_price_id or ""
        subscription = emulator.sdk.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": price}]}
        )
        close_database(own_database, allow=True)
        wait_until(
            lambda: (
                [r.stripe_subscription_id for r in queries_by_user(factory, 1)] == [subscription.id]
            ),
            timeout=60,
            what="the subscription made during the outage",
        )
        assert metric("collab_billing_reconciler_leader") == 1
    finally:
        stop.set()
        thread.join(30)
        engine.dispose()


def test_the_reconciler_outlives_a_clock_it_cannot_read(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Under `dev` the loop's clock is a request to the emulator (`dev_clock`), which fails
    while the emulator cannot answer: the loop goes on, and applies what happened meanwhile
    once the clock answers again (it stopped for good, silently: `dev` went on serving a
    mirror that no longer moved)."""
    clock_url = {"now": f"{emulator.url}/_emulator/clock"}

    def emulator_clock() -> float:
        now: float = httpx.get(clock_url["now"], timeout=5).json()["now"]
        return now

    reconciler = Reconciler(
        stripe_settings, engine, StripeGateway(stripe_settings), clock=emulator_clock
    )
    factory = reconciler.factory
    customer = user_with_a_customer(reconciler)
    thread, stop = start_in_background(reconciler.run, "reconciler")
    try:
        wait_until(lambda: reconciler.polls > 0, what="a first poll")
        clock_url["now"] = f"http://127.0.0.1:{free_port()}/_emulator/clock"  # nothing there
        time.sleep(1)
        price = stripe_settings.stripe_price_id or ""
        subscription = emulator.sdk.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": price}]}
        )
        clock_url["now"] = f"{emulator.url}/_emulator/clock"
        wait_until(
            lambda: (
                [r.stripe_subscription_id for r in queries_by_user(factory, 1)] == [subscription.id]
            ),
            what="the subscription made while the clock failed",
        )
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)


LOCK_KEY_PARTS = {"high": ADVISORY_LOCK_KEY >> 32, "low": ADVISORY_LOCK_KEY & 0xFFFFFFFF}


def metric(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


def test_after_a_first_sync_on_an_empty_account_a_backlog_commits_under_faults(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    """The first poll saw an empty account (no event to start from), then a backlog came.
    Under 20% failed requests every window read is committed and a failed request costs that
    request, not the walk: one poll after another the backlog is applied in full, and without
    faults it takes about one request per 100 events (it took 12 times that, and under
    faults never committed anything)."""
    # No retry in the SDK: every failed request reaches the poller.
    reconciler = make_reconciler(stripe_settings, engine, stripe_max_network_retries=0)
    reconciler.drain()  # the first poll: a resync of an empty account
    customers = 200
    users_and_their_events(reconciler, emulator, customers)
    faults = {"rate": 0.2, "statuses": [429, 500, 503], "retry_after": 0, "seed": 3}
    emulator.control("POST", "faults", {**faults, "path_prefix": "/v1/events"})
    failures = drain_until_done(reconciler)
    emulator.control("DELETE", "faults")
    assert set(processed_event_ids(reconciler.factory)) == relevant_event_ids(emulator)
    assert assert_matches_stripe(emulator, reconciler.factory) > 0
    print(f"polls that failed under faults: {failures}")

    # The same backlog again, on a new account, without faults, at Stripe's test-mode rate
    # (one window read at a time): the requests it costs.
    clear_tables(engine)
    emulator.reset()
    reconciler = make_reconciler(stripe_settings, engine, stripe_requests_per_second=25.0)
    reconciler.drain()
    generated = users_and_their_events(reconciler, emulator, customers)
    emulator.control("DELETE", "requests")
    reconciler.drain()
    event_requests = emulator.control("GET", "requests")["by_route"]["GET /v1/events"]
    # The budget is events/100 + 10. The stretch below the burst is read as one
    # window, not cut by the burst's density into mostly empty ones: 25 requests (it took 29).
    assert event_requests <= generated["events"] / 100 + 6, event_requests
    assert set(processed_event_ids(reconciler.factory)) == relevant_event_ids(emulator)


def users_and_their_events(
    reconciler: Reconciler, emulator: Emulator, customers: int
) -> dict[str, Any]:
    """Users 1..N, and their customers' events in the emulator (ten each)."""
    with reconciler.factory() as session, session.begin():
        for n in range(1, customers + 1):
            queries.upsert_user(session, n, f"user{n}", None)
    emulator.price()
    generated: dict[str, Any] = emulator.control(
        "POST",
        "generate",
        {"customers": customers, "events_per_customer": 10, "first_github_user_id": 1},
    )
    return generated


def test_no_write_waits_for_stripe(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    """Same-second ties that only a re-read settles, from a Stripe that takes 2 s to answer
    that read: the reads are made with no transaction open, so another writer (a new user,
    on SQLite's one write lock) is not held up by them."""
    reconciler = make_reconciler(stripe_settings, engine)
    generate_backlog(emulator, reconciler.factory, customers=5, per_customer=4)
    emulator.control("POST", "generate", {"customers": 3, "ambiguous_ties": 3,
                                          "first_github_user_id": 6})  # fmt: skip
    with reconciler.factory() as session, session.begin():
        for n in range(6, 9):
            queries.upsert_user(session, n, f"user{n}", None)
    fault = {"rate": 0.0, "latency_ms": 2000, "path_prefix": "/v1/subscriptions/"}
    emulator.control("POST", "faults", fault)
    drain = threading.Thread(target=reconciler.drain)
    drain.start()
    wait_until(lambda: slow_read_in_flight(emulator), what="a slow Stripe read")
    started = time.monotonic()
    with reconciler.factory() as session, session.begin():
        queries.upsert_user(session, 100, "writer", None)
    waited = time.monotonic() - started
    drain.join(60)
    emulator.control("DELETE", "faults")
    assert waited < 1.0, f"a write waited {waited:.1f} s for Stripe"
    assert assert_matches_stripe(emulator, reconciler.factory) > 0


def slow_read_in_flight(emulator: Emulator) -> bool:
    counts = emulator.control("GET", "requests")
    return bool(counts["in_flight"]) and "GET /v1/subscriptions/{id}" in counts["by_route"]


@pytest.mark.postgres_only
def test_a_leader_whose_lock_is_gone_stops_its_drain(
    stripe_settings: Settings, emulator: Emulator, own_database: str
) -> None:
    """The leader's lock connection dies mid-drain (terminated, a network cut) and another
    process takes the lock: the old leader stops after its current batch, rather than drain
    on beside the new one and read every page twice."""
    engine = make_engine(own_database)
    upgrade_to_head(engine)
    settings = stripe_settings.model_copy(update={"database_url": own_database})
    reconciler = make_reconciler(settings, engine, stripe_requests_per_second=5.0)
    backlog = generate_backlog(emulator, reconciler.factory, 600, 10)  # ~60 pages: ~12 s
    thread, stop = start_in_background(reconciler.run, "reconciler")
    other = LeaderLock(engine)  # another process's
    try:
        wait_until(lambda: processed_event_ids(reconciler.factory), what="a first batch")
        with engine.connect() as connection:
            holder = connection.scalar(HOLDER_QUERY, LOCK_KEY_PARTS)
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder})
        wait_until(other.acquire, timeout=5, what="the lock, freed")

        def settled() -> int | None:  # after the old leader's check and its last batch
            before = len(processed_event_ids(reconciler.factory))
            time.sleep(2 * HELD_CHECK_SECONDS)
            return before if len(processed_event_ids(reconciler.factory)) == before else None

        stopped_at = wait_until(settled, timeout=30, what="the old leader to stop")
        time.sleep(2)
        assert len(processed_event_ids(reconciler.factory)) == stopped_at
        assert stopped_at < backlog["events"]  # it stopped, the backlog not done
        assert metric("collab_billing_reconciler_leader") == 0
    finally:
        stop.set()
        thread.join(30)
        other.release()
        engine.dispose()
