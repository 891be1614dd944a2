"""One active reconciler per database.

PostgreSQL: a session-level advisory lock held on a dedicated connection; it is released by
the server when the process dies, so a standby takes over at its next try. SQLite: an
exclusive `flock` on a file next to the database (SQLite deployments are single-host).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from collab_billing.db.engine import is_sqlite

log = logging.getLogger(__name__)

ADVISORY_LOCK_KEY = 0x636F6C6C61625F62  # "collab_b"
USAGE_SENDER_LOCK_KEY = 0x636F6C6C61625F75  # "collab_u": the usage sender's own lock
# A lock whose connection died (its backend terminated, a network cut) is free for a standby:
# the holder learns it at its next check, within this long.
HELD_CHECK_SECONDS = 1.0
# pg_locks lists every database's locks; advisory locks are each database's own.
HOLDER_QUERY = text(
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = :high AND objid = :low AND objsubid = 1"
)


class LeaderLock:
    """The lock of one role (`name`): the reconciler's by default; another role (the
    notification sender) takes its own key, so that its leader is elected the same way."""

    def __init__(
        self, engine: Engine, key: int = ADVISORY_LOCK_KEY, name: str = "reconciler"
    ) -> None:
        self.engine = engine
        self.key = key
        self.name = name
        self._connection: Connection | None = None
        self._checked_at = 0.0  # when its connection last answered (monotonic)
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        """Try once, without waiting. True while we hold (or just took) the lock."""
        if self.held():
            return True
        return self._acquire_file() if is_sqlite(self.engine) else self._acquire_postgres()

    def held(self) -> bool:
        """Whether the lock is ours. Its connection is checked at most once a second: a
        drain asks between batches, the notification sender at each delivery's turn."""
        if self._file is not None:
            return True
        if self._connection is None:
            return False
        if time.monotonic() - self._checked_at < HELD_CHECK_SECONDS:
            return True
        try:
            self._connection.execute(text("SELECT 1"))
        except SQLAlchemyError:
            log.warning("lost the database connection that held the %s lock", self.name)
            self._drop_connection()
            return False
        self._checked_at = time.monotonic()
        return True

    def release(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            self._drop_connection()
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def _acquire_postgres(self) -> bool:
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key})
        if got:
            self._connection, self._checked_at = connection, time.monotonic()
            return True
        connection.close()
        return False

    def _acquire_file(self) -> bool:
        handle = open(lock_file_path(self.engine, self.name), "a+")  # noqa: SIM115 - held for the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return True

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()
                self._connection.close()
            except SQLAlchemyError:
                pass
        self._connection = None


def lock_file_path(engine: Engine, name: str = "reconciler") -> Path:
    database = engine.url.database or "memory"
    return Path(f"{database}.{name}.lock")


def current_holder(engine: Engine) -> str:
    """Who holds the lock, for `reconcile --status`."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            pid = connection.scalar(
                HOLDER_QUERY,
                {"high": ADVISORY_LOCK_KEY >> 32, "low": ADVISORY_LOCK_KEY & 0xFFFFFFFF},
            )
        return f"PostgreSQL backend pid {pid}" if pid else "none"
    path = lock_file_path(engine)
    if not path.exists():
        return "none"
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"process {handle.read().strip() or '?'}"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return "none"


def start_in_background(
    run: Callable[[threading.Event], None], name: str
) -> tuple[threading.Thread, threading.Event]:
    """Run a leader loop (`Reconciler.run`, `UsageSender.run`, `Notifier.run`) in a daemon
    thread; set the returned event to stop it after its current step."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(stop,), name=name, daemon=True)
    thread.start()
    return thread, stop
