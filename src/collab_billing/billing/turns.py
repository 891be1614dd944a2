"""One Checkout of a user at a time, across the API's processes.

Starting a Checkout expires the user's open ones, then opens its own. Two requests of one user
at once (a double click) would each find nothing to expire and leave two sessions that could
both be paid: they take turns instead. A turn is held while Stripe is called, so it is not a
database transaction: on PostgreSQL it is a session-level advisory lock, on a connection of
its own in autocommit; on SQLite, whose deployments have one API process, a lock in the
process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import Conflict
from collab_billing.db.engine import is_sqlite

# How long a request waits for the user's previous Checkout (a few Stripe calls).
WAIT_SECONDS = 30.0
_POLL_SECONDS = 0.05
# pg_advisory_lock(space, key): the reconciler's per-object locks take space 7341.
_LOCK_SPACE = 7342
_TRY = text("SELECT pg_try_advisory_lock(:space, :key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:space, :key)")
# SQLite: users share a fixed set of locks (two users on one lock only wait for each other).
_LOCAL = [threading.Lock() for _ in range(64)]


@contextmanager
def checkout_turn(
    factory: sessionmaker[Session], user_id: int, wait_seconds: float = WAIT_SECONDS
) -> Iterator[None]:
    """The user's turn to start a Checkout; 409 after `wait_seconds` of waiting for it."""
    busy = Conflict("a Checkout for this user is being started: retry in a moment")
    engine = factory.kw["bind"]
    if is_sqlite(engine):
        lock = _LOCAL[user_id % len(_LOCAL)]
        if not lock.acquire(timeout=wait_seconds):
            raise busy
        try:
            yield
        finally:
            lock.release()
        return
    key = {"space": _LOCK_SPACE, "key": user_id % 2**31}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        deadline = time.monotonic() + wait_seconds
        while not connection.scalar(_TRY, key):
            if time.monotonic() >= deadline:
                raise busy
            time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            connection.execute(_UNLOCK, key)
