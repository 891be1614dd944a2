"""Engine behaviour under concurrency: SQLite writers take their turn at once (a write lock shared
by threads and processes instead of SQLite's sleeping busy handler); PostgreSQL connections are
pinged when they were idle, not on every checkout."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from collab_billing.db import engine as engine_module
from collab_billing.db.checkpoints import WalCheckpoints
from collab_billing.db.engine import make_engine, write_lock


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'writers.db'}"
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (n INTEGER)"))
    engine.dispose()
    return url


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_engines_on_one_file_share_the_write_lock(sqlite_url: str, sqlite_engine: Engine) -> None:
    other = make_engine(sqlite_url)
    try:
        assert write_lock(other) is write_lock(sqlite_engine)
        assert write_lock(make_engine("sqlite://")) is not write_lock(make_engine("sqlite://"))
    finally:
        other.dispose()


def test_the_write_lock_lasts_exactly_the_write_transaction(sqlite_engine: Engine) -> None:
    lock = write_lock(sqlite_engine)
    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
        assert lock.locked()
    assert not lock.locked()  # after COMMIT

    with pytest.raises(RuntimeError), sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (2)"))
        raise RuntimeError("boom")
    assert not lock.locked()  # after ROLLBACK

    with pytest.raises(OperationalError), sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO no_such_table VALUES (1)"))
    assert not lock.locked()  # a failed statement

    connection = sqlite_engine.connect()
    connection.execute(text("INSERT INTO t VALUES (3)"))
    assert lock.locked()
    connection.invalidate()  # the connection is thrown away mid-transaction
    assert not lock.locked()
    connection.close()

    with sqlite_engine.connect() as connection:
        connection.execute(text("INSERT INTO t VALUES (4)"))
        assert lock.locked()
    assert not lock.locked()  # closed without commit: rolled back on return to the pool

    reader = sqlite_engine.connect().execution_options(**{engine_module.READ_ONLY: True})
    with reader.begin():
        reader.execute(text("SELECT count(*) FROM t"))
        assert not lock.locked()  # deferred reads never take it
    reader.close()
    with sqlite_engine.connect() as connection:
        assert connection.execute(text("SELECT n FROM t ORDER BY n")).scalars().all() == [1]


HOLD_SECONDS = 0.5


def delays_after_release(hold: object, engine: Engine) -> list[float]:
    """For several phases: how long after the holder's COMMIT a waiting writer got its turn.

    SQLite's busy handler retries on a fixed schedule (after ~230 ms of waiting, every 100 ms),
    so without the lock a waiter starts up to 100 ms late, depending on the phase; the phases
    tried cover that range."""
    delays = []
    for extra in (0.0, 0.02, 0.04, 0.06, 0.08):
        committed_at = hold(HOLD_SECONDS + extra)  # type: ignore[operator]
        started = time.monotonic()
        with engine.begin() as connection:  # waits while the holder writes
            began = time.monotonic()
            connection.execute(text("INSERT INTO t VALUES (0)"))
        assert began - started >= HOLD_SECONDS / 2, "the waiter did wait"
        delays.append(began - committed_at())
    return delays


def test_a_waiting_thread_writes_as_soon_as_the_writer_commits(sqlite_url: str) -> None:
    holder_engine, waiter_engine = make_engine(sqlite_url), make_engine(sqlite_url)

    def hold(seconds: float) -> object:
        committed: list[float] = []
        began = threading.Event()

        def run() -> None:
            with holder_engine.begin() as connection:
                connection.execute(text("INSERT INTO t VALUES (1)"))
                began.set()
                time.sleep(seconds)
            committed.append(time.monotonic())

        thread = threading.Thread(target=run)
        thread.start()
        began.wait(5)
        return lambda: (thread.join(), committed[0])[1]

    try:
        delays = delays_after_release(hold, waiter_engine)
    finally:
        holder_engine.dispose()
        waiter_engine.dispose()
    assert max(delays) < 0.04, [round(d, 3) for d in delays]


HOLDER = """
import sys, time
from sqlalchemy import text
from collab_billing.db.engine import make_engine
engine = make_engine(sys.argv[1])
for line in sys.stdin:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
        print("began", flush=True)
        time.sleep(float(line))
    print(time.monotonic(), flush=True)
"""


def test_a_waiting_process_writes_soon_after_another_process_commits(sqlite_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, sqlite_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    stdin, stdout = holder.stdin, holder.stdout

    def hold(seconds: float) -> object:
        stdin.write(f"{seconds}\n")
        stdin.flush()
        assert stdout.readline().strip() == "began"
        return lambda: float(stdout.readline())  # CLOCK_MONOTONIC: one clock per machine

    engine = make_engine(sqlite_url)
    try:
        delays = delays_after_release(hold, engine)
    finally:
        engine.dispose()
        stdin.close()
        holder.wait(10)
    # Between processes the file lock is retried every 5 ms at most.
    assert max(delays) < 0.04, [round(d, 3) for d in delays]


BACK_TO_BACK = """
import sys, time
from sqlalchemy import text
from collab_billing.db.engine import make_engine
engine = make_engine(sys.argv[1])
print("started", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:  # like a reconciler draining a backlog: no pause between
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO t VALUES (1)"))
        time.sleep(0.05)
"""


def test_a_process_writing_back_to_back_lets_a_waiting_process_in_at_its_next_commit(
    sqlite_url: str,
) -> None:
    """Whoever lets go of the write lock cannot take it back while another process waits:
    the waiter is next, after at most one of the busy writer's transactions (50 ms here).
    Without the turnstile the busy writer, asking again at once, won nearly every time."""
    busy = subprocess.Popen(
        [sys.executable, "-c", BACK_TO_BACK, sqlite_url, "4"], stdout=subprocess.PIPE, text=True
    )
    assert busy.stdout is not None and busy.stdout.readline().strip() == "started"
    engine = make_engine(sqlite_url)
    waits = []
    assert not write_lock(engine).contended_within(60)
    try:
        time.sleep(0.3)
        for _ in range(10):
            started = time.monotonic()
            with engine.begin() as connection:
                connection.execute(text("INSERT INTO t VALUES (2)"))
            waits.append(time.monotonic() - started)
            time.sleep(0.02)
        assert busy.poll() is None, "the busy writer was still writing"
    finally:
        engine.dispose()
        busy.kill()
        busy.wait(10)
    assert max(waits) < 0.2, [round(w, 3) for w in waits]
    assert write_lock(engine).contended_within(60), "the waits were noticed (see Poller._batches)"


# -- PostgreSQL: idle connections are pinged, busy ones are not ----------------------------


@pytest.fixture
def pg_engine(database_url: str) -> Iterator[Engine]:
    if not database_url.startswith("postgresql"):
        pytest.skip("needs PostgreSQL: set TEST_DATABASE_URL")
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.postgres_only
def test_an_idle_connection_that_died_is_replaced_at_checkout(
    pg_engine: Engine, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = backend_pid(pg_engine)
    with engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    assert backend_pid(pg_engine) != pid  # no error: the ping found it dead


@pytest.mark.postgres_only
def test_a_connection_in_steady_use_is_not_pinged(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[object] = []
    original = pg_engine.dialect.do_ping
    monkeypatch.setattr(pg_engine.dialect, "do_ping", lambda c: pings.append(c) or original(c))
    for _ in range(5):
        backend_pid(pg_engine)
    assert pings == []
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
    backend_pid(pg_engine)
    assert len(pings) == 1


def test_commits_leave_checkpoints_to_the_reconciler_every_few_batches(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    """A commit no longer copies the WAL into the database file at 1,000 pages (a webhook
    delivery would have paid for a drain's pages); the reconciler's checkpoints do, every
    `every` batches, on their own thread."""
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    checkpoints = WalCheckpoints(sqlite_engine, every=3)
    size_before = path.stat().st_size
    for _ in range(3):
        with sqlite_engine.begin() as connection:  # ~2 MB a batch: 6 MB > 1,000 pages
            connection.execute(
                text(
                    "INSERT INTO t SELECT randomblob(100) FROM (WITH RECURSIVE c(x) AS "
                    "(SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000) SELECT x FROM c)"
                ),
            )
        assert path.stat().st_size == size_before, "a commit ran a checkpoint"
        checkpoints.batch_committed()
    checkpoints.close()
    assert path.stat().st_size > size_before + 1_000_000


def test_the_end_of_a_drain_checkpoints_what_its_last_batches_wrote(
    sqlite_url: str, sqlite_engine: Engine
) -> None:
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    size_before = path.stat().st_size
    checkpoints = WalCheckpoints(sqlite_engine, every=5)
    with sqlite_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO t SELECT randomblob(100) FROM (WITH RECURSIVE c(x) AS "
                "(SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 20000) SELECT x FROM c)"
            ),
        )
    checkpoints.batch_committed()
    assert path.stat().st_size == size_before  # one batch of five: not yet
    checkpoints.close()
    assert path.stat().st_size > size_before + 1_000_000
    WalCheckpoints(sqlite_engine).close()  # a drain that applied nothing: nothing to do
