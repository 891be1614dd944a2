"""A backlog behind a service that has polled before is walked upward from the newest event at
or below the cursor: every page is read once, batches never split an object's second, memory
holds about one batch, and the rows end equal to Stripe's."""

from __future__ import annotations

import gc
import math
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db import ledger
from collab_billing.db.engine import make_session_factory
from collab_billing.db.models import User
from collab_billing.reconcile import memory, slicing
from collab_billing.reconcile.apply import Applier, ApplyStats
from collab_billing.reconcile.events import Event, object_id
from collab_billing.reconcile.groups import Batch
from collab_billing.reconcile.poll import TURN_BATCH_SIZE, Poller
from collab_billing.stripe_gateway import EventPage, StripeGateway, StripeGatewayError
from tests.reconcile_helpers import (
    assert_matches_stripe,
    generate_backlog,
    processed_event_ids,
    relevant_event_ids,
)
from tests.stripe_helpers import Emulator

BATCH = 150


class RecordingApplier(Applier):
    """Records the batches it is given; `before`, when set, sees each batch first."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[list[Event]] = []
        self.before: Callable[[Sequence[Event]], None] | None = None

    def apply(
        self,
        events: Sequence[Event],
        pending: Sequence[object] = (),
        cursor: int | None = None,
        prepared: Batch | None = None,
    ) -> ApplyStats:
        self.batches.append(list(events))
        if self.before is not None:
            self.before(events)
        return super().apply(events, pending, cursor, prepared)  # type: ignore[arg-type]


def poller(factory: sessionmaker[Session], settings: Settings) -> tuple[Poller, RecordingApplier]:
    gateway = StripeGateway(settings)
    applier = RecordingApplier(factory, gateway)
    # A buffer far smaller than the backlog: reading windows top-down would overflow it again
    # and again; the walk does not depend on it.
    return Poller(factory, gateway, applier, max_buffer=200, batch_size=BATCH), applier


def seconds_split(batches: list[list[Event]]) -> Counter[int]:
    """How many batches each `created` second is spread over."""
    return Counter(second for batch in batches for second in {e.created for e in batch})


def check_batches(batches: list[list[Event]]) -> None:
    """Batches come in `created` order and hold at most about two batches' worth; an object's
    events of one second are never in two batches."""
    for older, newer in pairwise(b for b in batches if b):
        assert max(e.created for e in older) <= min(e.created for e in newer)
    assert max(len(b) for b in batches) < 2 * BATCH
    homes: dict[tuple[str, int], set[int]] = {}
    for number, batch in enumerate(batches):
        for event in batch:
            homes.setdefault((object_id(event), event.created), set()).add(number)
    assert all(len(found) == 1 for found in homes.values()), "an object's tie was split"


def small_history(
    settings: Settings, engine: Engine, emulator: Emulator
) -> tuple[sessionmaker[Session], Poller, RecordingApplier]:
    """Three customers' events in the emulator, not yet polled, and a poller for them."""
    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=3, per_customer=4)
    walker, applier = poller(factory, settings)
    return factory, walker, applier


def more_events(
    emulator: Emulator, factory: sessionmaker[Session], first: int, customers: int, span: int
) -> int:
    """Users `first..` and their events in the emulator, after everything so far; returns how
    many relevant events were added."""
    before = len(relevant_event_ids(emulator))
    with factory() as session, session.begin():
        session.execute(
            insert(User),
            [
                {"github_user_id": n, "github_login": f"u{n}"}
                for n in range(first, first + customers)
            ],
        )
    emulator.control("POST", "clock/advance", {"seconds": 2 * span})
    emulator.control(
        "POST",
        "generate",
        {
            "customers": customers,
            "events_per_customer": 8,
            "first_github_user_id": first,
            "span_seconds": span,
        },
    )
    return len(relevant_event_ids(emulator)) - before


@pytest.mark.parametrize(
    "span", [86_400, 4, 0], ids=["spread-over-a-day", "crowded-seconds", "all-in-one-second"]
)
def test_a_backlog_is_walked_up_from_the_cursor_once(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, span: int
) -> None:
    factory, walker, applier = small_history(stripe_settings, engine, emulator)
    walker.drain()  # the service has polled before: there is an event at its cursor
    with factory() as session:
        cursor = ledger.read_int_state(session, ledger.CURSOR)
    assert cursor is not None

    added = more_events(emulator, factory, first=4, customers=120, span=span)
    applier.batches.clear()
    report = walker.drain()

    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert assert_matches_stripe(emulator, factory) == 123
    assert report.stats.total("applied") == added
    # The backlog's pages, plus the newest page (which said there is more), the anchor and
    # the overlap below the cursor, and for each slice after the first its anchor and its
    # last page, maybe part full: nothing is read twice.
    more_slices = report.slices - 1
    assert report.requests <= math.ceil(added / 100) + 3 + 2 * more_slices
    assert report.events_seen <= added + 100 + 1 + 100 + more_slices
    check_batches(applier.batches)
    if span in (0, 4):
        assert max(seconds_split(applier.batches).values()) > 1, (
            "seconds larger than a batch should be cut between objects in this case"
        )
    # Idle again: one request, even when the overlap below the cursor holds a full page.
    assert walker.drain().requests == 1


def test_a_deep_backlog_far_from_stripe_is_walked_in_slices_at_once(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page 60 ms away: one walk would wait a round trip per page, so the backlog is cut
    into `created` slices whose pages are read at once; they are still applied in `created`
    order, each event once, and the rows end equal to Stripe's."""
    monkeypatch.setattr(slicing, "MIN_PAGES_PER_SLICE", 2)
    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=3, per_customer=4)
    settings = stripe_settings.model_copy(update={"stripe_requests_per_second": 1_000})
    walker, applier = poller(factory, settings)
    walker.drain()
    added = more_events(emulator, factory, first=4, customers=120, span=86_400)
    in_flight, most_in_flight = 0, 0
    lock = threading.Lock()
    list_events = walker.gateway.list_events

    def counted(**filters: Any) -> EventPage:
        nonlocal in_flight, most_in_flight
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        try:
            return list_events(**filters)
        finally:
            with lock:
                in_flight -= 1

    walk_events = walker.gateway.walk_events

    def counted_walk(**filters: Any) -> Iterator[EventPage]:
        nonlocal in_flight, most_in_flight
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        try:
            yield from walk_events(**filters)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(walker.gateway, "list_events", counted)
    monkeypatch.setattr(walker.gateway, "walk_events", counted_walk)
    emulator.control("POST", "faults", {"latency_ms": 60, "path_prefix": "/v1/events"})
    applier.batches.clear()
    report = walker.drain()

    assert report.slices > 1
    assert most_in_flight > 1
    assert report.stats.total("applied") == added
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert assert_matches_stripe(emulator, factory) == 123
    check_batches(applier.batches)
    # Each slice after the first costs its anchor and a last page maybe part full.
    assert report.requests <= math.ceil(added / 100) + 3 + 2 * (report.slices - 1)


def test_a_drain_tells_how_long_it_waited_for_stripe(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """`read_wait_seconds`: most of a drain when Stripe answers slowly, little of it when
    the database (here, a slow applier) is what the drain waits for."""
    factory, walker, applier = small_history(stripe_settings, engine, emulator)
    walker.drain()
    more_events(emulator, factory, first=4, customers=60, span=86_400)
    emulator.control("POST", "faults", {"latency_ms": 100, "path_prefix": "/v1/events"})
    far_from_stripe = walker.drain()
    assert far_from_stripe.stats.total("applied") > 400
    assert 0.5 * far_from_stripe.seconds <= far_from_stripe.read_wait_seconds
    assert far_from_stripe.read_wait_seconds <= far_from_stripe.seconds

    emulator.control("POST", "faults", {"latency_ms": 0})
    more_events(emulator, factory, first=64, customers=60, span=86_400)
    applier.before = lambda _events: time.sleep(0.15)  # a slow database, say
    slow_writes = walker.drain()
    assert len(applier.batches) >= 4
    assert slow_writes.read_wait_seconds < 0.5 * slow_writes.seconds


def test_a_walk_in_slices_stops_at_a_failing_slice(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stripe fails while slices are read: the poll fails, having applied nothing past the
    failure; the next poll applies the rest, each event once."""
    monkeypatch.setattr(slicing, "MIN_PAGES_PER_SLICE", 2)
    monkeypatch.setattr(slicing, "SLICING_ROUND_TRIP", 0.0)
    monkeypatch.setattr(slicing, "ROUND_TRIP_PER_CHAIN", 0.0001)
    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=3, per_customer=4)
    settings = stripe_settings.model_copy(
        update={"stripe_requests_per_second": 100_000, "stripe_max_network_retries": 0}
    )
    walker, _ = poller(factory, settings)
    walker.drain()
    added = more_events(emulator, factory, first=4, customers=120, span=86_400)
    list_events = walker.gateway.list_events
    calls = 0

    def failing_once(**filters: Any) -> EventPage:
        nonlocal calls
        calls += 1
        if calls == 6:
            raise StripeGatewayError("api_error", "Stripe is down", 500)
        return list_events(**filters)

    walk_events = walker.gateway.walk_events

    def walk_failing_once(**filters: Any) -> Iterator[EventPage]:
        nonlocal calls
        for page in walk_events(**filters):
            calls += 1
            if calls == 6:
                raise StripeGatewayError("api_error", "Stripe is down", 500)
            yield page

    monkeypatch.setattr(walker.gateway, "list_events", failing_once)
    monkeypatch.setattr(walker.gateway, "walk_events", walk_failing_once)
    with pytest.raises(StripeGatewayError):
        walker.drain()
    created = {e["id"]: int(e["created"]) for e in emulator.all_events()}
    applied = set(processed_event_ids(factory))
    missing = set(relevant_event_ids(emulator)) - applied
    assert 0 < len(missing) <= added
    # Applied in `created` order up to the failure: what is missing lies above what is not.
    assert max(created[i] for i in applied) <= min(created[i] for i in missing)
    report = walker.drain()

    assert report.slices > 1
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert assert_matches_stripe(emulator, factory) == 123


def test_events_applied_by_webhooks_above_the_cursor_are_not_applied_again(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    factory, walker, _ = small_history(stripe_settings, engine, emulator)
    walker.drain()
    added = more_events(emulator, factory, first=4, customers=40, span=3_600)
    newest = emulator.all_events()[:5]  # newest first
    Applier(factory, StripeGateway(stripe_settings)).apply(
        [Event.from_dict(e) for e in sorted(newest, key=lambda e: int(e["created"]))]
    )

    report = walker.drain()

    assert report.stats.total("duplicate") == 0
    # Rows the webhooks moved ahead make their older events stale; none is seen as new twice.
    assert report.stats.total("applied") + report.stats.total("stale") == added - len(newest)
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert_matches_stripe(emulator, factory)


def test_events_processed_after_the_reader_checked_them_are_not_applied_again(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """A webhook may process an event between the reader's look at the ledger and the batch's
    transaction: the batch's own ledger write finds it there, and leaves it alone."""
    factory, walker, applier = small_history(stripe_settings, engine, emulator)
    walker.drain()
    added = more_events(emulator, factory, first=4, customers=40, span=3_600)
    webhook = Applier(factory, StripeGateway(stripe_settings))
    raced: list[str] = []

    def webhook_first(events: Sequence[Event]) -> None:
        taken = list(events[::3])
        webhook.apply(taken)
        raced.extend(event.id for event in taken)

    applier.before = webhook_first
    report = walker.drain()

    assert report.stats.total("duplicate") == len(raced) > 0
    assert report.stats.total("applied") + report.stats.total("stale") == added - len(raced)
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert_matches_stripe(emulator, factory)


# A walk above the cursor that meets no processed event checks the ledger three times: the
# overlap below the cursor, its first window and its last (where webhooks' events would be).
CLEAN_WALK_CHECKS = 3


def checks_of_the_ledger(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the walk's checks of the ledger, as they are made."""
    checks: list[int] = []
    fresh = Poller._fresh

    def counted(self: Poller, events: list[Event]) -> list[Event]:
        checks.append(len(events))
        return fresh(self, events)

    monkeypatch.setattr(Poller, "_fresh", counted)
    return checks


def test_a_backlog_nobody_processed_is_checked_against_the_ledger_at_its_ends_only(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory, walker, _ = small_history(stripe_settings, engine, emulator)
    walker.drain()
    added = more_events(emulator, factory, first=4, customers=300, span=86_400)
    checks = checks_of_the_ledger(monkeypatch)

    report = walker.drain()

    assert report.windows > 10
    assert len(checks) == CLEAN_WALK_CHECKS, checks
    assert report.stats.total("applied") + report.stats.total("stale") == added
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert_matches_stripe(emulator, factory)


def test_processed_events_in_an_unchecked_window_turn_the_checks_back_on(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Webhooks (retried by Stripe after an outage) may have processed events anywhere in a
    backlog: the batch's ledger write finds those of an unchecked window, they are not
    applied again, and the windows after it are checked again."""
    factory, walker, _ = small_history(stripe_settings, engine, emulator)
    walker.drain()
    added = more_events(emulator, factory, first=4, customers=300, span=86_400)
    events = sorted(emulator.all_events()[:added], key=lambda e: int(e["created"]))
    middle = [Event.from_dict(e) for e in events[len(events) // 2 :][: BATCH // 3]]
    Applier(factory, StripeGateway(stripe_settings)).apply(middle)
    checks = checks_of_the_ledger(monkeypatch)

    report = walker.drain()

    assert report.stats.total("duplicate") > 0
    assert len(checks) > CLEAN_WALK_CHECKS, checks  # on again after the duplicates
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert_matches_stripe(emulator, factory)


def test_the_cyclic_collector_is_paused_only_while_draining(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    _, walker, applier = small_history(stripe_settings, engine, emulator)
    seen: list[bool] = []

    def check(_: Sequence[Event]) -> None:
        seen.append(gc.isenabled())
        if len(seen) == 1:
            raise RuntimeError("the database went away")

    applier.before = check
    with pytest.raises(RuntimeError):
        walker.drain()
    assert gc.isenabled()  # a failed poll leaves the collector on
    gc.freeze()  # as `serve` does with its start-up objects: a poll leaves them frozen
    try:
        frozen = gc.get_freeze_count()
        walker.drain()
        assert gc.get_freeze_count() > frozen // 2  # (some were freed meanwhile)
    finally:
        gc.unfreeze()
    assert seen == [False, False]
    assert gc.isenabled()


def test_garbage_in_reference_cycles_is_freed_during_a_long_drain(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Some libraries' objects are reference cycles (httpx's responses, which hold their
    bodies): with the collector paused for a whole drain they would pile up (2.4 GB at 600k
    events, when pages were read with httpx)."""
    factory, walker, applier = small_history(stripe_settings, engine, emulator)
    walker.drain()
    more_events(emulator, factory, first=4, customers=300, span=86_400)
    alive: list[int] = []

    class Cycle:
        def __init__(self) -> None:
            self.itself = self

    def make_garbage(events: Sequence[Event]) -> None:
        for _ in events:
            Cycle()  # garbage at once, that only the collector frees
        alive.append(sum(1 for o in gc.get_objects() if isinstance(o, Cycle)))

    applier.before = make_garbage
    report = walker.drain()

    bound = 2 * (walker.max_buffer + BATCH)
    assert report.events_seen > 3 * bound  # so that without collections they would pass it
    assert max(alive) <= bound, alive


def test_the_heap_is_trimmed_beside_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handing freed memory back to the system walks the whole heap: the drain does not wait
    for it, and a trim still running is not started again."""
    running, finish = threading.Event(), threading.Event()
    trims: list[str] = []

    def slow_trim(_pad: int) -> int:
        trims.append(threading.current_thread().name)
        running.set()
        finish.wait(5)
        return 1

    monkeypatch.setattr(memory, "_MALLOC_TRIM", slow_trim)
    memory.release_memory()  # returns while the trim runs
    assert running.wait(5)
    memory.release_memory()
    finish.set()
    deadline = time.monotonic() + 5
    while memory._TRIMMING.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trims == ["malloc-trim"]
    assert not memory._TRIMMING.locked()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_trim_is_found_without_starting_another_program() -> None:
    """Finding libc through `ctypes.util.find_library` ran `ldconfig -p` at every start of
    the CLI: a process that the benchmark's drain counted as a helper of the service."""
    probe = """
import sys
started = []
sys.addaudithook(lambda event, args: event in ("subprocess.Popen", "os.posix_spawn",
    "os.exec", "os.fork") and started.append(event))
import collab_billing.cli
from collab_billing.reconcile import memory
print(started, memory._MALLOC_TRIM is not None)
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split("\n")[-2] == "[] True", result.stdout + result.stderr


def test_a_drain_takes_short_turns_while_other_sqlite_writers_wait(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, uses_postgres: bool
) -> None:
    """While writers wait for SQLite's one write lock (webhook deliveries), the drain commits
    smaller batches, so that each of them waits behind a short transaction."""
    if uses_postgres:
        pytest.skip("SQLite's write lock")
    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=120, per_customer=8)
    gateway = StripeGateway(stripe_settings)
    applier = RecordingApplier(factory, gateway)
    walker = Poller(factory, gateway, applier, batch_size=5_000)
    walker.drain()
    assert max(len(b) for b in applier.batches) > TURN_BATCH_SIZE  # alone: whole batches

    more_events(emulator, factory, first=121, customers=120, span=86_400)
    applier.batches.clear()
    holding = threading.Event()

    def another_writer() -> None:
        with engine.begin() as connection:
            connection.execute(text("UPDATE reconciler_state SET value = value"))
            holding.set()
            time.sleep(0.3)

    writer = threading.Thread(target=another_writer)
    writer.start()
    holding.wait(5)
    with engine.begin() as connection:  # waits for the other writer: the lock is contended
        connection.execute(text("UPDATE reconciler_state SET value = value"))
    writer.join()
    walker.drain()

    assert len(applier.batches) > 1
    assert max(len(b) for b in applier.batches) <= TURN_BATCH_SIZE
    assert assert_matches_stripe(emulator, factory) == 240


@pytest.mark.parametrize(
    ("round_trip", "requests_per_second", "chains"),
    [
        (0.01, 100_000, 1),  # a local Stripe: one walk keeps up with applying
        (0.15, 100, 8),  # far away, live-mode limit: as many as allowed
        (0.15, 20, 3),  # far away, the default limit: 20 requests/s over 150 ms round trips
        (0.06, 1_000, 3),  # one walk per 17.5 ms of round trip
    ],
)
def test_how_many_walks_run_at_once(
    round_trip: float, requests_per_second: float, chains: int
) -> None:
    assert slicing.fetch_chains(round_trip, requests_per_second) == chains
