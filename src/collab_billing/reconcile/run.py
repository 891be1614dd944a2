"""The reconciler loop: leader election, polling at the cadence's interval, resync when
needed, status.

The loop survives every error: it logs one line, backs off, and tries again, taking the
leader lock again if it lost it. Between polls it waits as `cadence.Cadence` says, re-reading
the signals while it waits. `clock` and `sleep` are injectable: tests run 30 days in seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from collab_billing import metrics
from collab_billing.config import Settings
from collab_billing.db.engine import make_session_factory, read_only
from collab_billing.logs import new_request_id, request_id_scope
from collab_billing.reconcile import budget, ledger
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.cadence import Cadence
from collab_billing.reconcile.leader import LeaderLock, current_holder
from collab_billing.reconcile.poll import DrainReport, NeedsResync, Poller
from collab_billing.reconcile.resync import ResyncReport, resync
from collab_billing.reconcile.signals import ActivitySignals
from collab_billing.state.access import AccessRules, Clock, system_clock
from collab_billing.stripe_gateway import StripeGateway

log = logging.getLogger(__name__)

MAX_BACKOFF_INTERVALS = 10
Sleep = Callable[[threading.Event, float], None]


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        gateway: StripeGateway,
        signals: ActivitySignals | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep | None = None,
        access_clock: Clock = system_clock,
    ) -> None:
        """`clock`: the loop's own timing; `access_clock`: the service's "now" by which the
        state documents its writes change judge access (`create_app`'s clock)."""
        self.settings = settings
        self.engine = engine
        rules = AccessRules(settings.past_due_grace(), access_clock)
        self.factory: sessionmaker[Session] = make_session_factory(engine, rules.session_info())
        self.gateway = gateway
        self.clock = clock
        self.signals = signals or ActivitySignals(self.factory, clock)
        self.sleep: Sleep = sleep or self.signals.wait
        # While waiting, the signals of other processes are read again this often.
        self.recheck_seconds = settings.reconcile_interval_seconds
        self.cadence = cadence_of(settings)
        self.applier = Applier(
            self.factory, gateway, clock=clock, source="poll", defer_documents=True
        )
        self.poller = Poller(
            self.factory, gateway, self.applier, clock=clock, give_way=self.signals.give_way
        )
        self.lock = LeaderLock(engine)
        self.last_error: str | None = None
        self.last_report: DrainReport | None = None
        self.polls = 0

    def drain(
        self, stop: threading.Event | None = None, leading: Callable[[], bool] | None = None
    ) -> DrainReport:
        """Read and apply everything new; resync first when events cannot be trusted.
        With `stop` set, or `leading()` false, return after the current batch's transaction."""
        with request_id_scope(new_request_id("poll")):
            judged_at = self._judge_retention()
            with read_only(self.factory) as session:
                cursor = ledger.read_int_state(session, ledger.CURSOR) or 0
            if linked := self.applier.adopt(as_of=cursor):
                log.info("linked customers whose user appeared", extra={"linked": linked})
            with metrics.POLL_SECONDS.time():
                report = self.poller.drain(stop, leading, polled_from=judged_at)
            if report.stats.total("applied") or report.missed_by_webhooks:
                self.signals.event_seen()
            if report.missed_by_webhooks:
                self.signals.webhooks_missed()
            self._record(report)
        self.last_report = report
        return report

    def _judge_retention(self) -> int:
        """Resync until no unread event may have expired; the second judged at. A resync
        counts as a poll from its start: when the clock passed Stripe's 30 days while it
        listed (a test clock moved under `dev`), the events meanwhile are gone and only
        another resync catches up what they did."""
        while True:
            try:
                return self.poller.check_retention()
            except NeedsResync as reason:
                self.resync(str(reason))

    def resync(self, reason: str) -> ResyncReport:
        log.warning("resyncing from Stripe's list endpoints", extra={"reason": reason})
        metrics.RESYNCS.labels("never_synced" if "never" in reason else "events_expired").inc()
        report = resync(self.factory, self.gateway, clock=self.clock)
        log.info(
            "resync done",
            extra={
                "customers_linked": report.customers_linked,
                "subscriptions_written": report.subscriptions_written,
            },
        )
        return report

    def run(self, stop: threading.Event, once: bool = False) -> None:
        """Poll at the cadence's interval while leader; stand by otherwise. Returns when `stop`
        is set (or, with `once`, after one complete poll as leader)."""
        failures, leader, starting, started = 0, False, True, 0.0
        try:
            while not stop.is_set():
                try:
                    if starting:  # a start is activity: catch up fast, then back off
                        self.signals.event_seen()
                        starting = False
                    # Inside the `try`: under `dev` the clock is a request to the emulator,
                    # which may fail (a long `clock/advance` holds it busy).
                    started = self.clock()
                    leader = self.lock.acquire()
                    metrics.LEADER.set(1 if leader else 0)
                    if leader:
                        # A leader whose lock is gone stops between batches, rather than
                        # drain beside the new leader.
                        self.drain(stop, self.lock.held)
                        self.polls += 1
                    else:  # a standby's (or a demoted leader's) wait is no poll's
                        metrics.POLL_INTERVAL.set(0)
                    failures, self.last_error = 0, None
                    if once and leader:
                        return
                except Exception as error:  # the loop must outlive any failure
                    failures += 1
                    self.last_error = f"{type(error).__name__}: {error}"[:300]
                    log.error(
                        "reconcile failed; retrying",
                        extra={"consecutive_failures": failures, "error": self.last_error},
                    )
                    self.lock.release()  # its connection may be dead: take it anew
                    metrics.LEADER.set(0)
                self._flush_reads()
                fast = self.settings.reconcile_interval_seconds
                if failures:
                    # Stripe, the database or the clock down: back off, up to ten fast
                    # intervals.
                    self.sleep(stop, fast * min(2**failures, MAX_BACKOFF_INTERVALS))
                elif not leader:
                    self.sleep(stop, fast)  # a standby: trying the lock costs Stripe nothing
                else:
                    self._wait_for_next_poll(stop, started)
        finally:
            self._flush_reads()
            self.lock.release()
            metrics.LEADER.set(0)

    def _flush_reads(self) -> None:
        """The reads counted so far recorded, by the loop's clock (kept for the next flush
        when the clock or the database fails)."""
        try:
            now = self.clock()
        except Exception as error:
            log.warning("could not read the clock: %s", type(error).__name__)
            return
        budget.flush_reads_or_log(self.factory, now)

    def _wait_for_next_poll(self, stop: threading.Event, started: float) -> None:
        """Until `started` + the interval, which is worked out again while waiting: activity
        (here or in another process) can bring the next poll closer."""
        while not stop.is_set():
            due = started + self._interval_or_fast()
            try:
                left = due - self.clock()
            except Exception as error:  # the clock failed: the next poll finds out more
                log.warning("could not read the clock: %s", type(error).__name__)
                self.sleep(stop, self.recheck_seconds)
                return
            if left <= 0:
                return
            self.sleep(stop, min(left, self.recheck_seconds))

    def interval(self) -> float:
        """Seconds from one poll's start to the next, as the signals and budget stand now."""
        now = self.clock()
        signals = self.signals.read()
        spent = budget.read_budget(self.factory, now, self.settings.reconcile_read_budget_share)
        seconds = self.cadence.interval(signals, spent, now)
        metrics.POLL_INTERVAL.set(seconds)
        return seconds

    def _interval_or_fast(self) -> float:
        try:
            return self.interval()
        except Exception as error:  # the database is down: the next poll fails and backs off
            log.warning("could not work out the poll interval: %s", type(error).__name__)
            return self.settings.reconcile_interval_seconds

    def _record(self, report: DrainReport) -> None:
        """The poll's log line. A complete poll is as far behind Stripe as it took (`lag`)."""
        with read_only(self.factory) as session:
            pending = ledger.count_pending(session)
        log.info(
            "poll",
            extra={
                "requests": report.requests,
                "events_seen": report.events_seen,
                "windows": report.windows,
                "concurrency": report.concurrency,
                **{name: report.stats.total(name) for name in OUTCOMES},
                "stripe_reads": report.stats.stripe_reads,
                "pending": pending,
                "lag_seconds": None if report.interrupted else round(report.seconds, 1),
                "seconds": round(report.seconds, 3),
            },
        )


def cadence_of(settings: Settings) -> Cadence:
    return Cadence(settings.reconcile_interval_seconds, settings.reconcile_safety_interval_seconds)


OUTCOMES = ("applied", "stale", "duplicate", "unmatched", "failed", "waiting")


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
        """How far behind Stripe the database may be, at most: the time since the start of
        the last complete poll, which applied every event created before it. Not the age of
        the newest event applied: webhooks never show that none was missed, and a quiet
        account is not behind. None before a poll."""
        if self.last_drain_at is None:
            return None
        return max(0.0, self.read_at - self.last_drain_at)

    @property
    def failed(self) -> list[ledger.PendingEvent]:
        """Events that failed `ledger.MAX_ATTEMPTS` times or more (retries go on): what
        `/healthz`, the metric and `reconcile --status` count as failed. One failure is
        retried seconds later, and alerting on it would fire at every passing fault."""
        return [p for p in self.pending if p.attempts >= ledger.MAX_ATTEMPTS]


def read_status(engine: Engine) -> Status:
    with read_only(make_session_factory(engine)) as session:
        return Status(
            cursor=ledger.read_int_state(session, ledger.CURSOR),
            last_drain_at=ledger.read_int_state(session, ledger.LAST_DRAIN_AT),
            last_resync_at=ledger.read_int_state(session, ledger.LAST_RESYNC_AT),
            pending=ledger.all_pending_events(session),
            leader=current_holder(engine),
            newest_applied=ledger.newest_processed(session),
            read_at=time.time(),
        )
