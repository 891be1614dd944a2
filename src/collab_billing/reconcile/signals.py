"""What the reconciler listens to: activity and webhook deliveries (its cadence), and the
deliveries being answered (its drain gives way to them).

The admin and webhook routes note them here. Within one process the note wakes the waiting
loop; a `reconcile` worker in another process reads it from `reconciler_state`
(docs/reconciliation.md, "Freshness and the read budget").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.engine import read_only, transaction
from collab_billing.reconcile import ledger
from collab_billing.reconcile.cadence import Signals

log = logging.getLogger(__name__)

LAST_ACTIVITY_AT = "last_activity_at"
LAST_WEBHOOK_AT = "last_webhook_at"
WEBHOOKS_MISSED_AT = "webhooks_missed_at"
WRITE_EVERY_SECONDS = 30.0
WAKE_CHECK_SECONDS = 0.25


class ActivitySignals:
    def __init__(
        self, factory: sessionmaker[Session], clock: Callable[[], float] = time.time
    ) -> None:
        self.factory = factory
        self.clock = clock
        self.last_activity_at: float | None = None
        self.last_webhook_at: float | None = None
        self._written_at: dict[str, float] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._webhooks_in_flight = 0
        self._idle = threading.Condition()

    def activity(self) -> None:
        """A Checkout or portal session was created: poll fast for a while."""
        now = self.clock()
        with self._lock:
            self.last_activity_at = now
        self._wake.set()
        self._write(LAST_ACTIVITY_AT, now)

    def event_seen(self) -> None:
        """The reconciler found new events (or started): activity. Noted in the database too,
        so that `reconcile --status`, and a standby that takes over, go by it."""
        now = self.clock()
        with self._lock:
            self.last_activity_at = now
            due = self._due(LAST_ACTIVITY_AT, now)
        if due:
            self._write(LAST_ACTIVITY_AT, now)

    def webhooks_missed(self) -> None:
        """A poll found events older than the webhook grace that no delivery had applied."""
        self._write(WEBHOOKS_MISSED_AT, self.clock())

    def webhook_delivered(self) -> None:
        """A verified webhook delivery: webhooks work, and something happened."""
        now = self.clock()
        with self._lock:
            self.last_webhook_at = self.last_activity_at = now
            due = self._due(LAST_WEBHOOK_AT, now)
        self._wake.set()
        if due:
            self._write(LAST_WEBHOOK_AT, now)

    def _due(self, name: str, now: float) -> bool:
        """Whether a note is written now (under `_lock`): at most once per
        `WRITE_EVERY_SECONDS`, as notes come in bursts and each write takes SQLite's writer."""
        if now - self._written_at.get(name, float("-inf")) < WRITE_EVERY_SECONDS:
            return False
        self._written_at[name] = now
        return True

    @contextmanager
    def webhook_in_flight(self) -> Iterator[None]:
        """Around a webhook delivery being answered: the drain of this process gives way."""
        with self._idle:
            self._webhooks_in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._webhooks_in_flight -= 1
                if not self._webhooks_in_flight:
                    self._idle.notify_all()

    def give_way(self, seconds: float) -> None:
        """Wait (at most `seconds`) until no webhook delivery of this process is being
        answered (docs/reconciliation.md, "Reading events", says why)."""
        with self._idle:
            self._idle.wait_for(lambda: not self._webhooks_in_flight, timeout=seconds)

    def _write(self, name: str, now: float) -> None:
        # A failed write must not fail the request that noted it (its Stripe call is done).
        try:
            with transaction(self.factory) as session:
                ledger.write_state(session, name, int(now))
                if name == LAST_WEBHOOK_AT:
                    ledger.write_state(session, LAST_ACTIVITY_AT, int(now))
        except Exception as error:
            log.warning("could not record %s: %s", name, type(error).__name__)

    def read(self) -> Signals:
        """What the cadence goes by: the newest of this process's notes and of the database's
        (other processes')."""
        names = (LAST_ACTIVITY_AT, LAST_WEBHOOK_AT, WEBHOOKS_MISSED_AT)
        with read_only(self.factory) as session:
            activity, webhook, missed = [ledger.read_int_state(session, n) for n in names]
            retry = ledger.next_retry_at(session)
        with self._lock:
            local = (self.last_activity_at, self.last_webhook_at)
        return Signals(_newest(local[0], activity), _newest(local[1], webhook), missed, retry)

    def wait(self, stop: threading.Event, seconds: float) -> None:
        """Sleep up to `seconds`; return early when `stop` is set or a signal is noted."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not self._wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, WAKE_CHECK_SECONDS))
        self._wake.clear()


def _newest(first: float | None, second: int | None) -> float | None:
    values = [v for v in (first, second) if v is not None]
    return max(values) if values else None
