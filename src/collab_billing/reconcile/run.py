"""The reconciler loop: leader election, polling at an interval, resync when needed, status."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing import metrics
from collab_billing.config import Settings
from collab_billing.db import ledger
from collab_billing.db.engine import make_session_factory
from collab_billing.db.models import ProcessedStripeEvent
from collab_billing.logs import new_request_id, request_id_scope
from collab_billing.reconcile.apply import Applier, ApplyStats
from collab_billing.reconcile.events import Event
from collab_billing.reconcile.groups import Batch
from collab_billing.reconcile.leader import LeaderLock, current_holder
from collab_billing.reconcile.poll import DrainReport, EventWalks, NeedsResync, Poller
from collab_billing.reconcile.resync import ResyncReport, resync
from collab_billing.stripe_gateway import EventPage, StripeGateway
from collab_billing.stripe_gateway.walk_process import ProcessWalks

log = logging.getLogger(__name__)

# After this many failed tries an event counts as failed (status, metric); retries go on.
MAX_ATTEMPTS = 5


class TimedApplier(Applier):
    """The applier, observing `collab_billing_apply_batch_seconds{source}` per batch."""

    def __init__(self, *args: Any, source: str = "poll", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source

    def apply(
        self,
        events: Sequence[Event],
        pending: Sequence[ledger.PendingEvent] = (),
        cursor: int | None = None,
        prepared: Batch | None = None,
    ) -> ApplyStats:
        with metrics.APPLY_SECONDS.labels(self.source).time():
            return super().apply(events, pending, cursor, prepared)


class _CountingWalks:
    """Walks of the event list that count the events they return, by type
    (`collab_billing_events_fetched`)."""

    def __init__(self, walks: EventWalks) -> None:
        self._walks = walks

    def walk_events(self, **kwargs: Any) -> Generator[EventPage, None, None]:
        with contextlib.closing(self._walks.walk_events(**kwargs)) as pages:
            for page in pages:
                yield _count_fetched(page)


class _CountingEvents(_CountingWalks):
    """The gateway as the poller sees it: counts what `list_events` and `walk_events`
    return; every other attribute is the gateway's own."""

    def __init__(self, gateway: StripeGateway) -> None:
        super().__init__(gateway)
        self._gateway = gateway

    def list_events(self, **kwargs: Any) -> EventPage:
        return _count_fetched(self._gateway.list_events(**kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gateway, name)


def _count_fetched(page: EventPage) -> EventPage:
    for event_type, count in Counter(e.type for e in page.events).items():
        metrics.EVENTS_FETCHED.labels(event_type).inc(count)
    return page


class Reconciler:
    def __init__(self, settings: Settings, engine: Engine, gateway: StripeGateway) -> None:
        self.settings = settings
        self.engine = engine
        self.factory: sessionmaker[Session] = make_session_factory(engine)
        self.gateway = gateway
        self.applier = TimedApplier(self.factory, gateway, source="poll")
        self.walks = ProcessWalks(gateway) if settings.walks_in_worker() else None
        self.poller = Poller(
            self.factory,
            cast(StripeGateway, _CountingEvents(gateway)),
            self.applier,
            walks=None if self.walks is None else cast(EventWalks, _CountingWalks(self.walks)),
        )
        self.lock = LeaderLock(engine)

    def drain(self, stop: threading.Event | None = None) -> DrainReport:
        """Read and apply everything new; resync first when events cannot be trusted.
        With `stop` set, return after the current batch's transaction."""
        with request_id_scope(new_request_id("poll")):
            try:
                self.poller.check_retention()
            except NeedsResync as reason:
                self.resync(str(reason))
            worker_pages = self._worker_pages()
            with metrics.POLL_SECONDS.time():
                report = self.poller.drain(stop)
            self._record(report, self._worker_pages() - worker_pages)
        return report

    def _worker_pages(self) -> int:
        return 0 if self.walks is None else self.walks.pages_from_worker

    def resync(self, reason: str) -> ResyncReport:
        log.warning("resyncing from Stripe's list endpoints", extra={"reason": reason})
        # A fixed label, not the message (it holds numbers: one series per value).
        metrics.RESYNCS.labels("never_synced" if "never" in reason else "events_expired").inc()
        report = resync(self.factory, self.gateway)
        log.info(
            "resync done",
            extra={
                "customers_linked": report.customers_linked,
                "subscriptions_written": report.subscriptions_written,
            },
        )
        return report

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Poll every interval while leader; stand by otherwise. Returns when `stop` is set."""
        interval = self.settings.reconcile_interval_seconds
        failures = 0
        try:
            while not stop.is_set():
                leader = self.lock.acquire()
                metrics.LEADER.set(1 if leader else 0)
                if leader:
                    try:
                        self.drain(stop)
                        failures = 0
                    except Exception:
                        failures += 1
                        log.exception("poll failed", extra={"consecutive_failures": failures})
                if once and leader:
                    return
                # Back off on repeated failures (Stripe down), up to ten intervals.
                stop.wait(interval * min(2**failures, 10))
        finally:
            self.lock.release()
            metrics.LEADER.set(0)

    def _record(self, report: DrainReport, worker_pages: int) -> None:
        metrics.record_outcomes(report.stats.outcomes)
        status = read_status(self.engine)
        if status.lag is not None:
            metrics.RECONCILER_LAG.set(status.lag)
        if not report.interrupted:
            metrics.LAST_POLL.set(time.time())
        metrics.PENDING_EVENTS.set(len(status.pending))
        metrics.FAILED_EVENTS.set(sum(1 for p in status.pending if p.attempts >= MAX_ATTEMPTS))
        log.info(
            "poll",
            extra={
                "requests": report.requests,
                "events_seen": report.events_seen,
                "applied": report.stats.total("applied"),
                "stale": report.stats.total("stale"),
                "duplicate": report.stats.total("duplicate"),
                "unmatched": report.stats.total("unmatched"),
                "failed": report.stats.total("failed"),
                "waiting": report.stats.total("waiting"),
                "stripe_reads": report.stats.stripe_reads,
                "pending": len(status.pending),
                "lag_seconds": None if status.lag is None else round(status.lag, 1),
                "seconds": round(report.seconds, 3),
                "read_wait_seconds": round(report.read_wait_seconds, 3),
                "worker_pages": worker_pages,
            },
        )


@dataclass
class Status:
    cursor: int | None
    last_drain_at: int | None
    last_resync_at: int | None
    pending: list[ledger.PendingEvent]
    leader: str
    newest_applied: int | None = None  # `created` of the newest event in the ledger
    read_at: float = 0.0

    @property
    def lag(self) -> float | None:
        """Now minus the `created` of the newest applied event (polled or webhook); None
        before there is one, as after a resync of an account without events (cursor 0)."""
        newest = max((t for t in (self.newest_applied, self.cursor) if t), default=None)
        return None if newest is None else max(0.0, self.read_at - newest)

    @property
    def failed(self) -> list[ledger.PendingEvent]:
        return [p for p in self.pending if p.last_error is not None]


def read_status(engine: Engine) -> Status:
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        newest = session.scalar(
            select(func.max(ProcessedStripeEvent.stripe_event_created_timestamp))
        )
        return Status(
            cursor=ledger.read_int_state(session, ledger.CURSOR),
            last_drain_at=ledger.read_int_state(session, ledger.LAST_DRAIN_AT),
            last_resync_at=ledger.read_int_state(session, ledger.LAST_RESYNC_AT),
            pending=ledger.all_pending_events(session),
            leader=current_holder(engine),
            newest_applied=None if newest is None else int(newest),
            read_at=time.time(),
        )


def start_in_background(reconciler: Reconciler) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True)
    thread.start()
    return thread, stop
