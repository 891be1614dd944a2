"""Engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
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
