"""The reconciler loop: leader election, polling at an interval, resync when needed, status."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from collab_billing import metrics
from collab_billing.config import Settings
from collab_billing.db import ledger
from collab_billing.db.engine import make_session_factory
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.leader import LeaderLock, current_holder
from collab_billing.reconcile.poll import DrainReport, NeedsResync, Poller
from collab_billing.reconcile.resync import ResyncReport, resync
from collab_billing.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)

# After this many failed tries an event counts as failed (status, metric); retries go on.
MAX_ATTEMPTS = 5


class Reconciler:
    def __init__(self, settings: Settings, engine: Engine, gateway: StripeGateway) -> None:
        self.settings = settings
        self.engine = engine
        self.factory: sessionmaker[Session] = make_session_factory(engine)
        self.gateway = gateway
        self.applier = Applier(self.factory, gateway)
        self.poller = Poller(self.factory, gateway, self.applier)
        self.lock = LeaderLock(engine)

    def drain(self) -> DrainReport:
        """Read and apply everything new; resync first when events cannot be trusted."""
        try:
            self.poller.check_retention()
        except NeedsResync as reason:
            self.resync(str(reason))
        with metrics.POLL_SECONDS.time():
            report = self.poller.drain()
        self._record(report)
        return report

    def resync(self, reason: str) -> ResyncReport:
        log.warning("resyncing from Stripe's list endpoints", extra={"reason": reason})
        metrics.RESYNCS.labels(reason.split(":")[0][:40]).inc()
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
                        self.drain()
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

    def _record(self, report: DrainReport) -> None:
        metrics.record_outcomes(report.stats.outcomes)
        if report.newest_created is not None:
            metrics.RECONCILER_LAG.set(max(0.0, time.time() - report.newest_created))
        status = read_status(self.engine)
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
                "stripe_reads": report.stats.stripe_reads,
                "seconds": round(report.seconds, 3),
            },
        )


@dataclass
class Status:
    cursor: int | None
    last_drain_at: int | None
    last_resync_at: int | None
    pending: list[ledger.PendingEvent]
    leader: str


def read_status(engine: Engine) -> Status:
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        return Status(
            cursor=ledger.read_int_state(session, ledger.CURSOR),
            last_drain_at=ledger.read_int_state(session, ledger.LAST_DRAIN_AT),
            last_resync_at=ledger.read_int_state(session, ledger.LAST_RESYNC_AT),
            pending=ledger.all_pending_events(session),
            leader=current_holder(engine),
        )


def start_in_background(reconciler: Reconciler) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True)
    thread.start()
    return thread, stop
