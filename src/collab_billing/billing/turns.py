"""One Checkout, or one change of a subscription, of a user at a time, across the API's
processes.

Starting a Checkout expires the user's open ones, then opens its own. Two requests of one user
at once (a double click) would each find nothing to expire and leave two sessions that could
both be paid. A change of plan beside usage reads the subscription's items, then adds the
new plan's usage prices: two at once each added them, and the usage was billed twice. The
second is refused at once (409) instead of waiting: waiting would hold one of the API's few
Stripe slots for nothing, and would then expire the first request's session, whose URL the
user may already be on (or find its change made). A turn is held while Stripe is called, so
it is not a database transaction: on PostgreSQL it is a session-level advisory lock, on a
connection of its own in autocommit; on SQLite, whose deployments have one API process, a
lock in the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import Conflict
from collab_billing.db.engine import is_sqlite

# pg_advisory_lock(space, key): the reconciler's per-object locks take space 7341.
_LOCK_SPACE = 7342
_TRY = text("SELECT pg_try_advisory_lock(:space, :key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:space, :key)")
# SQLite: users share a fixed set of locks (two users on one lock only turn each other away,
# for the few hundred milliseconds of a Checkout).
_LOCAL = [threading.Lock() for _ in range(64)]


@contextmanager
def checkout_turn(factory: sessionmaker[Session], user_id: int) -> Iterator[None]:
    """The user's turn to start a Checkout; 409 while another request of the user has it."""
    with user_turn(factory, user_id, "a Checkout for this user is being started"):
        yield


@contextmanager
def change_turn(factory: sessionmaker[Session], user_id: int) -> Iterator[None]:
    """The user's turn to change a subscription; 409 while another request of the user has
    it (or a Checkout's)."""
    with user_turn(factory, user_id, "a change of this user's subscription is being made"):
        yield


@contextmanager
def user_turn(factory: sessionmaker[Session], user_id: int, what: str) -> Iterator[None]:
    busy = Conflict(f"{what}: retry in a moment")
    engine = factory.kw["bind"]
    if is_sqlite(engine):
        lock = _LOCAL[user_id % len(_LOCAL)]
        if not lock.acquire(blocking=False):
            raise busy
        try:
            yield
        finally:
            lock.release()
        return
    key = {"space": _LOCK_SPACE, "key": user_id % 2**31}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if not connection.scalar(_TRY, key):
            raise busy
        try:
            yield
        finally:
            connection.execute(_UNLOCK, key)
