"""`ProcessWalks`: a deep backlog's walk made in a worker process, whose pages are the ones a
walk on the calling thread reads (with their payloads), whose requests count against the one
throttle and are reported here, whose Stripe errors are raised here, and whose worker is
stopped, and replaced, when a walk is left or the worker dies."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from collab_billing.config import Settings
from collab_billing.db import ledger
from collab_billing.db.engine import make_session_factory
from collab_billing.reconcile.events import RELEVANT_TYPES
from collab_billing.reconcile.poll import Poller
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.walk_process import ProcessWalks, WalkProcessError
from tests.reconcile_helpers import (
    assert_matches_stripe,
    generate_backlog,
    processed_event_ids,
    relevant_event_ids,
)
from tests.stripe_helpers import Emulator
from tests.test_event_walk import _Server, expected_pages, fail, gateway_for, server  # noqa: F401
from tests.test_poll_walk import RecordingApplier, check_batches, more_events

READY_SECONDS = 60  # a new interpreter that imports the service, on a busy machine


@pytest.fixture
def walks(server: _Server) -> Iterator[ProcessWalks]:  # noqa: F811
    requests: list[tuple[str, int | str]] = []
    gateway = gateway_for(server)
    gateway.observer = lambda operation, outcome: requests.append((operation, outcome))
    running = ProcessWalks(gateway)
    running.requests = requests  # type: ignore[attr-defined]
    running.start()
    yield running
    running.stop()


def walk(walks: ProcessWalks, anchor: str = "evt_0010") -> Iterator[list[str]]:
    for page in walks.walk_events(types=RELEVANT_TYPES, ending_before=anchor):
        yield [event.id for event in page.events]


def worker() -> multiprocessing.process.BaseProcess:
    (process,) = multiprocessing.active_children()
    return process


def test_the_worker_reads_the_pages_with_their_payloads_and_reports_its_requests(
    server: _Server,  # noqa: F811
    walks: ProcessWalks,
) -> None:
    assert walks.ready(timeout=READY_SECONDS)
    pages = list(walks.walk_events(types=RELEVANT_TYPES, ending_before="evt_0010"))

    assert [[e.id for e in page.events] for page in pages] == expected_pages()
    assert walks.pages_from_worker == 4
    # Each page's request sent ahead, as a walk here sends them; one connection.
    assert server.requests == ["evt_0010", "evt_0110", "evt_0210", "evt_0310"]
    assert server.connections == 1
    assert walks.requests == [("events.list", 200)] * 4  # type: ignore[attr-defined]
    event = pages[1].events[3]
    assert event.payload["id"] == event.id == "evt_0207"
    assert event.object.customer == "cus_1"


def test_a_long_walk_starts_the_worker_and_goes_on_in_it_once_it_is_ready(
    server: _Server,  # noqa: F811
) -> None:
    walks = ProcessWalks(gateway_for(server), start_after_pages=1)
    try:
        pages = walk(walks)
        first = next(pages)  # on this thread: no worker yet
        assert multiprocessing.active_children() == []
        second = next(pages)  # a page read: the worker is started, and this page read here
        assert walks.ready(timeout=READY_SECONDS)
        assert [first, second, *pages] == expected_pages()
    finally:
        walks.stop()
    assert walks.pages_from_worker == 2
    # The request this thread had sent ahead for the third page is dropped, not reused.
    assert server.requests == ["evt_0010", "evt_0110", "evt_0210", "evt_0210", "evt_0310"]
    assert multiprocessing.active_children() == []


def test_a_short_walk_starts_no_worker(walks: ProcessWalks, server: _Server) -> None:  # noqa: F811
    walks.stop()  # the fixture's, started ahead
    assert list(walk(walks)) == expected_pages()  # 4 pages, fewer than START_AFTER_PAGES
    assert walks.pages_from_worker == 0
    assert multiprocessing.active_children() == []


def test_the_worker_draws_on_the_gateways_throttle(walks: ProcessWalks) -> None:
    throttle = walks.gateway.throttle
    assert throttle.next_slot == 0.0  # no request made in this process
    assert walks.ready(timeout=READY_SECONDS)
    assert len(list(walk(walks))) == 4
    # The worker's four requests took their slots from the throttle this process holds: the
    # next request made here waits behind them.
    assert throttle.next_slot > 0.0


def test_stripes_error_in_the_worker_is_raised_here(
    server: _Server,  # noqa: F811
    walks: ProcessWalks,
) -> None:
    assert walks.ready(timeout=READY_SECONDS)
    server.answers[2] = server.answers[3] = fail(500)  # the second page, sent ahead and again
    pages = walk(walks)
    assert next(pages) == expected_pages()[0]
    with pytest.raises(StripeGatewayError) as raised:
        next(pages)
    assert (raised.value.kind, raised.value.http_status) == ("api_error", 500)
    assert "try again" in str(raised.value)
    assert ("events.list", 500) in walks.requests  # type: ignore[attr-defined]
    assert list(walk(walks)) == expected_pages()  # the next walk, whole


def test_the_worker_lives_for_one_walk(walks: ProcessWalks) -> None:
    """Stopped when its walk ends, or is left early: a service that is not walking a deep
    backlog has no worker (its memory, and its start-up, only while one is walked)."""
    assert walks.ready(timeout=READY_SECONDS)
    first = worker()
    assert list(walk(walks)) == expected_pages()
    assert not first.is_alive() and multiprocessing.active_children() == []

    walks.start()
    assert walks.ready(timeout=READY_SECONDS)
    second = worker()
    pages = walk(walks)
    next(pages)
    pages.close()
    assert not second.is_alive() and multiprocessing.active_children() == []
    assert second.pid != first.pid
    assert walks.pages_from_worker == 5

    # The next walk, short, is made here: it starts none.
    assert list(walk(walks)) == expected_pages()
    assert multiprocessing.active_children() == []


def test_a_worker_that_dies_mid_walk_fails_the_walk_and_is_replaced(walks: ProcessWalks) -> None:
    assert walks.ready(timeout=READY_SECONDS)
    pages = walk(walks)
    next(pages)
    os.kill(worker().pid or 0, signal.SIGKILL)
    with pytest.raises(WalkProcessError, match="ended mid-walk"):
        list(pages)
    assert walks.ready() is False and multiprocessing.active_children() == []
    assert list(walk(walks)) == expected_pages()


def test_a_worker_that_cannot_start_leaves_the_walk_here(
    server: _Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def no_process(_process: object) -> None:
        raise OSError("Resource temporarily unavailable")

    walks = ProcessWalks(gateway_for(server), start_after_pages=1)
    with monkeypatch.context() as patched:
        patched.setattr(multiprocessing.process.BaseProcess, "start", no_process)
        assert list(walk(walks)) == expected_pages()
    assert walks.pages_from_worker == 0
    assert "the walks' worker did not start" in caplog.text
    assert multiprocessing.active_children() == []
    try:
        walks.start()  # tried again, and now it starts
        assert walks.ready(timeout=READY_SECONDS)
        assert list(walk(walks)) == expected_pages()
        assert walks.pages_from_worker == 4
    finally:
        walks.stop()


def test_a_second_walk_while_the_worker_is_busy_is_made_here(walks: ProcessWalks) -> None:
    assert walks.ready(timeout=READY_SECONDS)
    busy = walk(walks)
    next(busy)
    assert list(walk(walks, anchor="evt_0210")) == expected_pages()[2:]
    assert walks.pages_from_worker == 1
    assert [expected_pages()[0], *busy] == expected_pages()
    assert walks.pages_from_worker == 4


def test_a_deep_backlog_is_walked_by_the_worker_and_the_rows_end_equal_to_stripes(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """Crowded seconds: many of an object's events share its newest second, whose order only
    their payloads (kept from the pages the worker sent) can settle."""
    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=3, per_customer=4)
    gateway = StripeGateway(stripe_settings)
    walks = ProcessWalks(gateway)
    applier = RecordingApplier(factory, gateway)
    poller = Poller(factory, gateway, applier, batch_size=150, walks=walks)
    poller.drain()  # the service has polled before: there is an event at its cursor
    with factory() as session:
        assert ledger.read_int_state(session, ledger.CURSOR) is not None
    added = more_events(emulator, factory, first=4, customers=120, span=4)
    walks.start()
    try:
        assert walks.ready(timeout=READY_SECONDS)
        applier.batches.clear()
        report = poller.drain()
    finally:
        walks.stop()

    assert walks.pages_from_worker >= math.ceil(added / 100) - 1
    assert sorted(processed_event_ids(factory)) == sorted(relevant_event_ids(emulator))
    assert assert_matches_stripe(emulator, factory) == 123
    assert report.stats.total("applied") == added
    check_batches(applier.batches)


def test_walks_are_made_in_a_worker_when_pages_may_come_fast(settings: Settings) -> None:
    def walks_in_worker(**update: object) -> bool:
        return settings.model_copy(update=update).walks_in_worker()

    assert not walks_in_worker(stripe_requests_per_second=20.0)  # the default: a thread keeps up
    assert walks_in_worker(stripe_requests_per_second=100.0)
    assert walks_in_worker(stripe_requests_per_second=20.0, reconcile_walk_process="on")
    assert not walks_in_worker(stripe_requests_per_second=1000.0, reconcile_walk_process="off")


def test_the_worker_ends_when_the_service_is_killed(server: _Server) -> None:  # noqa: F811
    base = f"http://127.0.0.1:{server.server_address[1]}"
    service = subprocess.Popen(
        [sys.executable, "-c", KILLED_SERVICE.format(base=base)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert service.stdout is not None
        worker_pid = int(service.stdout.readline())  # mid-walk: a page taken, more sent
        assert running(worker_pid)
    finally:
        service.kill()
        service.wait()
    deadline = time.monotonic() + 10
    while running(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived the service"
        time.sleep(0.05)


KILLED_SERVICE = """
import multiprocessing, time
from collab_billing.config import Settings
from collab_billing.reconcile.events import RELEVANT_TYPES
from collab_billing.stripe_gateway import StripeGateway
from collab_billing.stripe_gateway.walk_process import ProcessWalks

settings = Settings(stripe_api_key="sk_test_walk", stripe_api_base="{base}", _env_file=None)
walks = ProcessWalks(StripeGateway(settings))
walks.start()
assert walks.ready(timeout=60)
pages = walks.walk_events(types=RELEVANT_TYPES, ending_before="evt_0010")
next(pages)
print(multiprocessing.active_children()[0].pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    """Alive, and not a zombie (whose parent has gone, and nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"
