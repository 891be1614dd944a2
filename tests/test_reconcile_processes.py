"""The reconciler as separate processes: killed mid-batch it loses nothing; only one runs per
database, and a standby takes over when the active one dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, text

from collab_billing import metrics
from collab_billing.config import Settings
from collab_billing.reconcile import budget
from collab_billing.reconcile.leader import LeaderLock
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.reconcile_helpers import (
    assert_matches_stripe,
    generate_backlog,
    processed_event_ids,
    relevant_event_ids,
)
from tests.stripe_helpers import EMULATOR_KEY, Emulator


def reconciler_env(database_url: str, emulator: Emulator) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": EMULATOR_KEY,
        "STRIPE_API_BASE": emulator.url,
        "STRIPE_REQUESTS_PER_SECOND": "1000",
        "RECONCILE_INTERVAL_SECONDS": "0.2",
        "RECONCILE_SAFETY_INTERVAL_SECONDS": "1",
        "LOG_FORMAT": "json",
    }


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "collab_billing", "reconcile", *args],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_until(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_stopped_then_killed_mid_backlog_then_restarted_converges(
    emulator: Emulator,
    engine: Engine,
    database_url: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
    session_factory: object,
) -> None:
    from collab_billing.db.engine import make_session_factory

    factory = make_session_factory(engine)
    # More events than one window holds, and slow event pages: after the first window's
    # batches commit, the worker is busy reading the next window when it is killed.
    generate_backlog(emulator, factory, customers=3000, per_customer=5)
    expected = relevant_event_ids(emulator)
    env = reconciler_env(database_url, emulator)
    emulator.control("POST", "faults", {"latency_ms": 15, "path_prefix": "/v1/events"})

    # SIGTERM: the worker ends after its current batch commits, long before the backlog ends.
    worker = spawn(env)
    wait_until(lambda: len(processed_event_ids(factory)) > 0)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    done_at_term = len(processed_event_ids(factory))
    assert 0 < done_at_term < len(expected), "SIGTERM should not wait for the whole backlog"

    # SIGKILL: no chance to finish anything.
    worker = spawn(env)
    wait_until(lambda: len(processed_event_ids(factory)) > done_at_term)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    done_before_kill = len(processed_event_ids(factory))
    assert done_at_term < done_before_kill < len(expected), "the kill should land mid-backlog"

    emulator.control("DELETE", "faults")
    restarted = spawn(env, "--once")
    assert restarted.wait(timeout=300) == 0
    processed = processed_event_ids(factory)
    assert len(processed) == len(set(processed))
    assert set(processed) == expected
    assert assert_matches_stripe(emulator, factory) == 3000


def test_sqlite_or_postgres_lock_admits_one_reconciler(engine: Engine) -> None:
    first, second = LeaderLock(engine), LeaderLock(engine)
    try:
        assert first.acquire()
        assert not second.acquire()
        first.release()
        assert second.acquire()
        assert not first.acquire()
    finally:
        first.release()
        second.release()


@pytest.mark.postgres_only
def test_a_standby_takes_over_when_the_leader_dies(
    emulator: Emulator,
    engine: Engine,
    database_url: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    from collab_billing.db.engine import make_session_factory
    from collab_billing.reconcile.leader import ADVISORY_LOCK_KEY

    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=10, per_customer=3)
    separator = "&" if "?" in database_url else "?"
    processes = {
        name: spawn(reconciler_env(f"{database_url}{separator}application_name={name}", emulator))
        for name in ("reconciler-a", "reconciler-b")
    }

    def holder() -> str | None:
        with engine.connect() as connection:
            value = connection.scalar(
                text(
                    "SELECT a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid = :high AND l.objid = :low "  # the reconciler's, no other
                    "AND a.application_name LIKE 'reconciler-%'"
                ),
                {"high": ADVISORY_LOCK_KEY >> 32, "low": ADVISORY_LOCK_KEY & 0xFFFFFFFF},
            )
        return str(value) if value else None

    wait_until(lambda: holder() is not None)
    leader = holder()
    assert leader is not None
    time.sleep(1)
    assert holder() == leader, "leadership must not flap while the leader lives"
    processes[leader].send_signal(signal.SIGKILL)
    processes[leader].wait()
    standby = next(name for name in processes if name != leader)
    wait_until(lambda: holder() == standby, timeout=30)
    # The new leader does the work: later events are applied.
    emulator.control("POST", "generate", {"customers": 3, "events_per_customer": 2,
                                          "first_github_user_id": 1})  # fmt: skip
    wait_until(lambda: set(processed_event_ids(factory)) >= relevant_event_ids(emulator))


def test_a_worker_runs_below_serve_serves_its_metrics_and_stops_on_sigterm(
    emulator: Emulator,
    engine: Engine,
    database_url: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    import httpx

    from collab_billing.db.engine import make_session_factory
    from tests.test_dev_and_serve import free_port

    generate_backlog(emulator, make_session_factory(engine), customers=20, per_customer=3)
    port = free_port()
    worker = spawn(reconciler_env(database_url, emulator), "--metrics-port", str(port))

    def scraped() -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""

    wait_until(lambda: "collab_billing_reconciler_leader 1.0" in scraped())
    wait_until(lambda: 'collab_billing_events_total{outcome="applied"' in scraped())
    # At a lower CPU priority: beside `serve` on one machine, a catch-up gives the API the CPU.
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(19, ours + 10)  # nice +10
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0


def peak_rss_mb(process: subprocess.Popen[bytes]) -> float:
    """The peak resident memory of a process started by `spawn`, once it has exited 0."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss / 1024


def test_a_catch_up_from_a_stripe_faster_than_the_database_holds_few_pages(
    emulator: Emulator,
    engine: Engine,
    database_url: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """With requests to spare (a raised limit, or a near Stripe), pages are read at the pace
    the database applies them: a worker catching up on 20,000 events needs little more
    memory than one that finds nothing to read, and applies them all."""
    from collab_billing.db.engine import make_session_factory

    env = reconciler_env(database_url, emulator)
    nothing_to_read = peak_rss_mb(spawn(env, "--once"))  # the first poll of an empty account
    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=2000, per_customer=10)
    catching_up = peak_rss_mb(spawn(env, "--once"))
    assert set(processed_event_ids(factory)) == relevant_event_ids(emulator)
    # The events' JSON is ~2.5 KB each: all 20,000 held at once would be ~50 MB.
    assert catching_up - nothing_to_read < 20, (nothing_to_read, catching_up)


def test_a_worker_records_its_reads_while_it_drains(
    emulator: Emulator,
    engine: Engine,
    database_url: str,
    spawn: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """The reads of a long catch-up count against the allowance as it goes, not when it ends:
    a worker killed mid-drain has recorded them but for the last few seconds."""
    from collab_billing.db.engine import make_session_factory

    factory = make_session_factory(engine)
    generate_backlog(emulator, factory, customers=3000, per_customer=5)  # ~150 pages
    env = {**reconciler_env(database_url, emulator), "STRIPE_REQUESTS_PER_SECOND": "10"}
    worker = spawn(env)  # ~15 s of reads at Stripe's test-mode pace

    def recorded() -> int:
        return budget.read_budget(factory, time.time(), 1.0).reads_30d

    wait_until(lambda: recorded() > 0, timeout=budget.RECORD_EVERY_SECONDS + 5)
    assert worker.poll() is None and recorded() < 120, "the drain should still be running"
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def test_a_standby_shows_no_poll_interval_of_its_own(
    stripe_settings: Settings, engine: Engine
) -> None:
    """Worker processes' poll intervals are combined by their maximum: a leader demoted to
    standby must not keep showing the interval it had while leading."""
    other = LeaderLock(engine)
    assert other.acquire()  # another process leads
    try:
        reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
        metrics.POLL_INTERVAL.set(9.67)  # as when it led
        stop = threading.Event()
        reconciler.sleep = lambda _stop, _seconds: stop.set()  # one turn of the loop
        reconciler.run(stop)
        assert REGISTRY.get_sample_value("collab_billing_poll_interval_seconds") == 0
    finally:
        other.release()
