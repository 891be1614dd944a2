"""The right to write to one SQLite database, taken in turns by threads and by processes.

SQLite has one writer at a time. A writer that finds the database locked waits in SQLite's busy
handler, which sleeps and retries with growing sleeps (up to 100 ms each); with a few writers
(webhook deliveries beside the reconciler, `serve --workers`, a `reconcile` process) waits of
hundreds of milliseconds came from those sleeps, not from the work. So writers first take this
lock: threads of one process queue on a thread lock and take over the moment the previous
transaction ends; processes share an exclusive `flock` on `<database>.write.lock`. SQLite's own
locking still decides: this only keeps writers from sleeping past their turn.

`flock` is not fair: a process that lets go of it and asks again at once (a reconciler
committing one batch and beginning the next) nearly always wins against a process that retries
every few milliseconds. Webhooks got a turn only now and then during a drain. So a process
waiting for the write lock first holds a turnstile, `<database>.write.turn`: whoever lets go of
the write lock must pass the turnstile to take it again, and so waits until that process has
had its turn. Processes take turns; threads of one process take turns behind the thread lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from typing import IO

# How long a writer waits for the write lock before leaving the wait to SQLite's own busy
# handler (as long again, then "database is locked"): the same bound as busy_timeout.
WRITE_LOCK_TIMEOUT_SECONDS = 30.0
_LONGEST_PAUSE = 0.005  # between two tries of a file lock held by another process


class WriteLock:
    """A lock shared by the threads of a process, then a turnstile and an exclusive `flock`
    shared with other processes."""

    def __init__(self, database_path: str | None) -> None:
        self._threads = threading.Lock()
        self._path = database_path  # None: the thread lock alone
        self._files: tuple[IO[str], IO[str]] | None = None  # (turnstile, write lock)
        self._file_locked = False
        self._contended_at = -1e9  # monotonic time of the last wait for the lock, in any thread

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(blocking=False):
            self._contended_at = time.monotonic()
            if not self._threads.acquire(timeout=timeout):
                return False
        files = self._open_files()
        if files is None:
            return True
        turnstile, write = files
        if not self._flock(turnstile, deadline):
            self._threads.release()
            return False
        try:
            locked = self._flock(write, deadline)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        if not locked:
            self._threads.release()
            return False
        self._file_locked = True
        return True

    def release(self) -> None:
        if self._file_locked and self._files is not None:
            self._file_locked = False
            fcntl.flock(self._files[1], fcntl.LOCK_UN)
        self._threads.release()

    def locked(self) -> bool:
        return self._threads.locked()

    def contended_within(self, seconds: float) -> bool:
        """Whether a writer of this process had to wait for the lock lately: a sign that
        writers take turns (webhook deliveries beside a drain, here or in another process)."""
        return time.monotonic() - self._contended_at < seconds

    def _flock(self, file: IO[str], deadline: float) -> bool:
        pause = 0.0005
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                self._contended_at = now = time.monotonic()
                if now >= deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, _LONGEST_PAUSE)

    def _open_files(self) -> tuple[IO[str], IO[str]] | None:
        if self._files is None and self._path is not None:
            try:  # kept open for the life of the process
                turnstile = open(f"{self._path}.write.turn", "a")  # noqa: SIM115
                self._files = (turnstile, open(f"{self._path}.write.lock", "a"))  # noqa: SIM115
            except OSError:  # a read-only directory: the thread lock alone
                self._path = None
        return self._files


class _WriteLocks:
    """One `WriteLock` per SQLite database file per process, shared by its engines."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, WriteLock] = {}

    def for_database(self, database: str | None) -> WriteLock:
        if not database or database == ":memory:" or database.startswith("file:"):
            return WriteLock(None)  # private to this engine (an in-memory database is too)
        path = os.path.realpath(database)
        with self._guard:
            return self._locks.setdefault(path, WriteLock(path))


WRITE_LOCKS = _WriteLocks()
