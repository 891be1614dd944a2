"""Engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.checkpoints import AUTOCHECKPOINT_PAGES
from collab_billing.db.write_lock import WRITE_LOCK_TIMEOUT_SECONDS, WRITE_LOCKS, WriteLock


def normalize_url(database_url: str) -> str:
    """Use psycopg 3 for plain `postgresql://` URLs (SQLAlchemy's default is psycopg2)."""
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return url.render_as_string(hide_password=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Foreign keys are off by default in SQLite; WAL lets readers run beside the writer,
    # and busy_timeout makes concurrent writers wait instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")  # see `checkpoints`
    # The WAL file keeps its largest size unless limited: back to 64 MB when it starts over.
    cursor.execute("PRAGMA journal_size_limit=67108864")
    # A statement that writes many rows keeps the pages it changes, to undo it alone, in a
    # statement journal: in memory rather than a temporary file (a batch's ledger insert at
    # a million events: 8.1 -> 6.8 s for 1M rows, measured apart from the service).
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


# Page cache of a connection, in KiB: SQLite's default, and a larger one for the length of a write
# transaction. A drain's batch changed ~2,000 pages of the ledger's index at a million events when
# the emulator's event ids were fully random (Stripe's, and now the emulator's, follow the second
# they were made in: far fewer) and ~1,500 of the subscriptions; with the default cache SQLite
# writes changed pages out to the WAL in the middle of the transaction, and reads them back from it.
# Only while writing: between transactions a connection's cache is of little use (another
# connection's commit empties it), and 16 MB on every pooled connection added 47 MB to a drain's
# peak RSS at 1M for ~4% more (docs/benchmarks.md, step 33), and as much per pooled connection to
# `serve`.
READ_CACHE_KIB = 2_000
WRITE_CACHE_KIB = 16_000

READ_ONLY = "collab_billing_read_only"
_HELD_WRITE_LOCK = "collab_billing_write_lock"


def write_lock(engine: Engine) -> WriteLock:
    """The write lock of a SQLite engine's database (the same object for every engine)."""
    return WRITE_LOCKS.for_database(engine.url.database)


def _install_sqlite_transactions(engine: Engine) -> None:
    """BEGIN IMMEDIATE (or deferred BEGIN for reads) under this process's write lock, which is
    released as soon as the transaction's COMMIT or ROLLBACK has run."""
    lock = write_lock(engine)
    dialect = engine.dialect
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def begin(connection: Any) -> None:
        # BEGIN IMMEDIATE takes the write lock up front, so two writers never deadlock
        # on a read-then-write upgrade (SQLite's "database is locked" on commit). Read-only
        # work begins deferred: under WAL, readers then run beside the writer.
        if connection.get_execution_options().get(READ_ONLY, False):
            connection.exec_driver_sql("BEGIN")
            return
        acquired = lock.acquire(timeout=WRITE_LOCK_TIMEOUT_SECONDS)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            connection.exec_driver_sql(f"PRAGMA cache_size=-{WRITE_CACHE_KIB}")
        except BaseException:
            if acquired:
                lock.release()
            raise
        if acquired:
            connection.connection.info[_HELD_WRITE_LOCK] = lock

    def do_commit(dbapi_connection: Any) -> None:
        try:
            commit(dbapi_connection)
        finally:
            _end_write(dbapi_connection)

    def do_rollback(dbapi_connection: Any) -> None:
        try:
            rollback(dbapi_connection)
        finally:
            _end_write(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    event.listen(engine, "begin", begin)
    # However a connection ends its transaction (invalidated on an error, closed, returned to
    # the pool), the lock does not outlive it.
    for name in ("checkin", "invalidate", "soft_invalidate", "close"):
        event.listen(engine.pool, name, _release_record)


def _end_write(dbapi_connection: Any) -> None:
    with contextlib.suppress(sqlite3.Error):  # a broken connection: its error is raised already
        dbapi_connection.execute(f"PRAGMA cache_size=-{READ_CACHE_KIB}")
    _release_connection(dbapi_connection)


def _release_connection(connection: Any) -> None:
    try:
        info = connection.info  # the pool's connection (SQLAlchemy passes its proxy)
    except (AttributeError, NotImplementedError):  # a bare or ad-hoc connection: never locked
        return
    _release(info)


def _release(info: dict[str, Any]) -> None:
    lock: WriteLock | None = info.pop(_HELD_WRITE_LOCK, None)
    if lock is not None:
        lock.release()


def _release_record(_dbapi_connection: Any, record: Any, *_args: Any) -> None:
    if record is not None:
        _release(record.info)


# PostgreSQL connections idle longer than this are pinged at checkout (a connection in steady
# use is not: a ping is a round trip, two per webhook delivery when done on every checkout).
PING_AFTER_IDLE_SECONDS = 10.0
_CHECKED_IN_AT = "collab_billing_checked_in_at"


def _ping_idle_connections(engine: Engine) -> None:
    """What `pool_pre_ping` does, for connections that sat in the pool for a while only: a
    connection that fails the ping is replaced (the pool retries the checkout)."""

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKED_IN_AT)
        if checked_in is None or time.monotonic() - checked_in < PING_AFTER_IDLE_SECONDS:
            return  # new, or in steady use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            raise DisconnectionError(f"idle connection failed its ping: {error}") from error


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    url = normalize_url(database_url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        event.listen(engine, "connect", _configure_sqlite)
        # Let SQLAlchemy, not pysqlite, emit BEGIN so that it can be IMMEDIATE.
        event.listen(
            engine,
            "connect",
            lambda dbapi_connection, _record: setattr(dbapi_connection, "isolation_level", None),
        )
        _install_sqlite_transactions(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    if "pool_pre_ping" not in kwargs:  # by default, ping connections that were idle
        _ping_idle_connections(engine)
    return engine


# The API's hot reads are single statements: a statement is atomic on both engines, so they need
# no transaction of their own. Bounded, so that a stuck database fails the request.
READ_STATEMENT_TIMEOUT_MS = 5_000


def make_read_engine(engine: Engine) -> Engine:
    """A second engine on the same database, for `FastRead`s: the API's single-statement reads.

    PostgreSQL: autocommit (no BEGIN and ROLLBACK round trips around the SELECT), a statement
    timeout. SQLite: the main engine's settings (autocommit at the driver, WAL); a lone SELECT
    reads one snapshot and never waits for the writer.
    """
    url = engine.url
    if is_sqlite(engine):
        return make_engine(url.render_as_string(hide_password=False))
    given = url.query.get("options")
    timeout = f"-c statement_timeout={READ_STATEMENT_TIMEOUT_MS}"
    options = f"{given} {timeout}" if isinstance(given, str) else timeout
    return make_engine(
        url.render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
        pool_size=4,
        max_overflow=8,
        connect_args={"connect_timeout": 5, "options": options},
    )


class FastRead:
    """One Core SELECT, compiled once for an engine and run straight on a DBAPI cursor.

    For the API's hot reads: SQLAlchemy's per-statement execution machinery (execution
    context, events, result objects) costs 40-100 us, more than the indexed read itself. The
    statement is still written in Core (one definition for both dialects), and each result
    column still goes through its type's result processor (SQLite's text datetimes and 0/1
    booleans come back as `datetime` and `bool`). Parameters must need no bind processing
    (integers, strings): checked here.

    A connection that turns out to be dead (the database restarted while it was in use, so
    the idle ping did not run) is invalidated and the statement retried once on a new one.
    """

    def __init__(self, engine: Engine, statement: Select[Any]) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        for bind in compiled.binds.values():
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise TypeError(f"FastRead: parameter {bind.key} needs bind processing")
        self.engine = engine
        self.sql = str(compiled)
        self._compiled = compiled
        self._positional = list(compiled.positiontup or []) if compiled.positional else None
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.selected_columns
        ]
        self._processors = [(i, p) for i, p in enumerate(processors) if p is not None]
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error

    def __call__(self, **params: Any) -> list[tuple[Any, ...]]:
        values = self._compiled.construct_params(params)
        arguments: Any = (
            values if self._positional is None else [values[k] for k in self._positional]
        )
        for attempt in (1, 2):
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                try:
                    cursor.execute(self.sql, arguments)
                    rows = list(cursor.fetchall())
                finally:
                    cursor.close()
            except self._dbapi_error as error:
                dead = self.engine.dialect.is_disconnect(
                    error,  # type: ignore[arg-type]  # the driver's Error class
                    connection.dbapi_connection,
                    None,
                )
                if not dead or attempt == 2:
                    raise
                connection.invalidate(error)
                continue
            finally:
                connection.close()
            if not self._processors:
                return rows
            return [self._process(row) for row in rows]
        raise AssertionError("unreachable")

    def _process(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        values = list(row)
        for index, processor in self._processors:
            values[index] = processor(values[index])
        return tuple(values)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def read_only(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads only: on SQLite it does not queue behind writers."""
    with factory() as session:
        session.connection(execution_options={READ_ONLY: True})
        yield session


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session
