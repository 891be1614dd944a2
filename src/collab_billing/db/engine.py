"""Engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, Select, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


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
    cursor.close()


READ_ONLY = "collab_billing_read_only"


def _begin_immediate(connection: Any) -> None:
    # BEGIN IMMEDIATE takes the write lock up front, so two writers never deadlock
    # on a read-then-write upgrade (SQLite's "database is locked" on commit). Read-only
    # work begins deferred: under WAL, readers then run beside the writer.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


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
        event.listen(engine, "begin", _begin_immediate)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


# The API's hot reads are single statements: a statement is atomic on both engines, so they need
# no transaction of their own. Bounded, so that a stuck database fails the request.
READ_STATEMENT_TIMEOUT_MS = 5_000


def make_read_engine(engine: Engine) -> Engine:
    """A second engine on the same database, for `FastRead`s: the API's single-statement reads.

    PostgreSQL: autocommit (no BEGIN and ROLLBACK round trips around the SELECT), no pre-ping
    (a dead connection is detected by the statement itself, see `FastRead`), a statement
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
        pool_pre_ping=False,
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

    A connection that turns out to be dead (the database restarted) is invalidated and the
    statement retried once on a new one: what a pre-ping does, without its round trip.
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
