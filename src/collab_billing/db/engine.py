"""Engines and sessions for SQLite and PostgreSQL.

SQLite follows SQLAlchemy's documented recipe for pysqlite transactions: the driver's own
transaction handling is turned off and SQLAlchemy emits `BEGIN IMMEDIATE`, so a writer takes
the write lock up front (two writers never deadlock on a read-to-write upgrade), and
`busy_timeout` makes a second writer wait. Reads (`read_only`) run outside any transaction,
each statement on its own snapshot: under WAL they run beside the writer. Writers of one
process take turns on a fair lock (`transaction`), so a webhook waits for at most one batch
of a drain; SQLite deployments have one writing process (`serve` refuses several workers).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

BUSY_TIMEOUT_MS = 30_000
# libpq's connection options, unless DATABASE_URL sets them: a connection to a host that
# vanished fails in seconds, not after the kernel's retransmissions (~15 minutes); a slow
# query is not cut (docs/operating.md, "Faults").
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
_READ_ONLY = "collab_billing_read_only"


def normalize_url(database_url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (SQLAlchemy's default is psycopg2)."""
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def shown_database_url(database_url: str) -> str:
    """The URL to print: its passwords, in the user info or as a `password` parameter
    (libpq's other form), masked."""
    url = make_url(database_url)
    if "password" in url.query:
        url = url.update_query_dict({"password": "xxxxx"})
    return url.render_as_string(hide_password=True)


def url_passwords(database_url: str) -> list[str]:
    """The passwords a database URL holds, for the logs to redact."""
    url = make_url(database_url)
    given = url.query.get("password")
    in_query = [given] if isinstance(given, str) else list(given or ())
    return [str(password) for password in (url.password, *in_query) if password]


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy, not pysqlite, emits BEGIN
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


def _begin_sqlite(connection: Any) -> None:
    # Reads begin no transaction: each statement reads its own snapshot (WAL), which is all
    # that the single-statement reads of the API and the reconciler's lookups need.
    if not connection.get_execution_options().get(_READ_ONLY, False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _configure_postgres(dbapi_connection: Any, _record: Any) -> None:
    from psycopg.types.array import ListBinaryDumper  # here: SQLite never loads psycopg

    # Each statement planned for its parameters: psycopg prepares a statement run five times,
    # and a generic plan kept from a nearly empty table (a first sync fills empty tables)
    # would scan it whole once it is large. Random page reads priced near sequential ones:
    # lookups are by indexed keys into tables the batches keep cached; at the default (4, a
    # spinning disk's) the planner reads them whole (docs/benchmarks.md, "first-sync", "apply").
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_custom_plan")
        cursor.execute("SET random_page_cost = 1.1")
    dbapi_connection.commit()
    # Lists (the arrays of `= ANY(:ids)` and of a batch's rows) are sent in PostgreSQL's
    # binary format, which psycopg dumps in C; its text format escapes each element in Python.
    dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    url = normalize_url(database_url)
    # JSON columns (a drain writes a state document and a notification per user it touches)
    # through orjson, faster than the standard library's encoder.
    kwargs.setdefault("json_serializer", _json_dumps)
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        # As many pooled connections as the API's worker threads (anyio's 40): a connection
        # made beyond the pool is opened and configured per request, and closed after it.
        kwargs.setdefault("pool_size", 40)
        kwargs.setdefault("max_overflow", 10)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **kwargs)
        event.listen(engine, "connect", _configure_sqlite)
        event.listen(engine, "begin", _begin_sqlite)
        return engine
    # All 30 connections kept: one beyond the pool would be opened (a server process) and
    # closed per request under load (docs/benchmarks.md, "admin").
    kwargs.setdefault("pool_size", 30)
    kwargs.setdefault("max_overflow", 0)
    kwargs.setdefault("pool_pre_ping", True)  # a restarted database costs one failed request
    given = make_url(url).query
    defaults = {key: value for key, value in POSTGRES_CONNECT_ARGS.items() if key not in given}
    kwargs.setdefault("connect_args", defaults)
    engine = create_engine(url, **kwargs)
    event.listen(engine, "connect", _configure_postgres)
    return engine


def make_session_factory(
    engine: Engine, info: dict[str, Any] | None = None
) -> sessionmaker[Session]:
    """`info`: copied into each session's `Session.info` (e.g. `AccessRules.session_info()`:
    how the state documents its transactions write judge access)."""
    return sessionmaker(engine, expire_on_commit=False, info=info or {})


class FairLock:
    """A lock granted in the order it was asked for.

    `threading.Lock` lets a thread that releases and re-acquires at once win nearly every time:
    a drain committing batch after batch would starve a webhook's write. Hand-written: the
    standard library has no fair lock, and this is one condition variable."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()
        self.waited_at = 0.0  # when someone last had to wait for it (monotonic)

    def __enter__(self) -> None:
        ticket = object()
        with self._condition:
            if self._queue:
                self.waited_at = time.monotonic()
            self._queue.append(ticket)
            self._condition.wait_for(lambda: self._queue[0] is ticket)

    def __exit__(self, *_exc: object) -> None:
        with self._condition:
            self._queue.popleft()
            self._condition.notify_all()


_SQLITE_WRITERS: dict[str, FairLock] = {}
_SQLITE_WRITERS_LOCK = threading.Lock()


def writers_waited(engine: Engine, within_seconds: float) -> bool:
    """Whether a writer of this process had to wait for SQLite's write lock lately."""
    turn = _writer_turn(engine)
    return turn is not None and time.monotonic() - turn.waited_at < within_seconds


def _writer_turn(engine: Engine) -> FairLock | None:
    if not is_sqlite(engine):
        return None  # PostgreSQL writers run side by side (per-object locks order them)
    with _SQLITE_WRITERS_LOCK:
        return _SQLITE_WRITERS.setdefault(str(engine.url.database), FairLock())


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One write transaction: commit on success, roll back on any exception. On SQLite the
    process's writers take turns, first come first served."""
    bind = factory.kw["bind"]
    turn = _writer_turn(bind) if isinstance(bind, Engine) else None
    with turn or nullcontext(), factory() as session, session.begin():
        yield session


@contextmanager
def read_only(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only: on SQLite it begins deferred and never waits for a writer."""
    with factory() as session:
        session.connection(execution_options={_READ_ONLY: True})
        yield session


@contextmanager
def read_connection(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """`read_only` for Core statements, on a plain connection: the admin API's hot reads. A
    Session runs even a Core statement through the ORM's execution, which cost more than the
    statements themselves."""
    bind = factory.kw["bind"]
    engine: Engine = bind if isinstance(bind, Engine) else bind.engine
    with engine.connect() as connection:
        connection.execution_options(**{_READ_ONLY: True})
        yield connection
