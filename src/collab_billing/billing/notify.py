"""The notification sender: the outbox's rows POSTed to the host app, signed, at least once.

One sender per database at a time (its own leader lock, elected like the reconciler's). Each
`billing_notifications` row is POSTed to every URL of `BILLING_NOTIFY_URLS`, signed per
Standard Webhooks (the `standardwebhooks` package: `webhook-id`, `webhook-timestamp`,
`webhook-signature`), with the body `{"type": "billing.state.updated", "timestamp", "data":
<the state document>}`. A 2xx from a URL ends that URL's delivery; the row is delivered once
every URL has answered 2xx. Anything else (an error status, a refused connection, a timeout) is
retried with exponential backoff up to `BILLING_NOTIFY_MAX_BACKOFF_SECONDS`, for
`BILLING_NOTIFY_RETRY_WINDOW_SECONDS` (3 days) after the row was written; then it expires
(`collab-billing notifications replay` sends it again).

Order per user: only the oldest undelivered row of a user is sent; the user's next one waits
until it is delivered or expired. Users are served side by side, a few deliveries at a time.
A row is marked delivered only after the POST succeeded (the outcomes of a turn's deliveries
are recorded together, in one transaction): a sender killed mid-delivery, or before it
recorded the outcome, sends it again after the restart (the `webhook-id` stays the same, so
a receiver can deduplicate; the document's `version` lets it drop anything older than what
it has).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from collab_billing import metrics
from collab_billing.config import Settings, shown_url
from collab_billing.db.engine import make_session_factory, read_only, transaction
from collab_billing.db.models import BillingNotification
from collab_billing.reconcile.leader import LeaderLock
from collab_billing.state.access import AccessRules, Clock, system_clock, utc
from collab_billing.state.document import iso
from collab_billing.state.outbox import NOTIFICATION_TYPE, recompute_ended_graces

log = logging.getLogger(__name__)

NOTIFIER_LOCK_KEY = 0x636F6C6C61625F6E  # "collab_n"
DELIVERY_THREADS = 8
DELIVERY_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 1.0
KEEP_DELIVERED = timedelta(days=7)
HOUSEKEEPING_SECONDS = 5.0
_N = BillingNotification
_PENDING = _N.delivered_at.is_(None) & _N.expired_at.is_(None)


@dataclass(frozen=True)
class Due:
    """A user's oldest undelivered notification, due now."""

    id: int
    user_id: int
    payload: dict[str, Any]
    delivered_to: list[str]
    attempts: int
    created_at: datetime  # the payload's `timestamp`
    queued_at: datetime  # its retry window's start: written, or replayed


def message_id(notification: Due) -> str:
    """The same for every delivery of a notification, never another's: its row id with its
    creation time (SQLite hands the ids of rows deleted after a week out again, and a
    receiver that deduplicates by `webhook-id` dropped those notifications)."""
    return f"msg_{notification.id}_{int(utc(notification.created_at).timestamp() * 1000)}"


def body_of(payload: dict[str, Any], created_at: datetime) -> bytes:
    return orjson.dumps({"type": NOTIFICATION_TYPE, "timestamp": iso(created_at), "data": payload})


def backoff_seconds(attempts: int, maximum: float) -> float:
    """The wait after the `attempts`-th failure: 1 s, 2 s, 4 s, ... up to `maximum`."""
    return float(min(FIRST_RETRY_SECONDS * 2 ** min(attempts - 1, 30), maximum))


class Notifier:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        clock: Callable[[], float] = time.time,
        access_clock: Clock = system_clock,
    ) -> None:
        """`clock`: the retries' timing; `access_clock`: the service's "now", by which the
        sweep finds ended graces (`create_app`'s clock)."""
        self.urls = settings.notify_urls()
        self.webhooks = [Webhook(secret) for secret in settings.notify_secrets()]
        self.max_backoff = settings.billing_notify_max_backoff_seconds
        self.retry_window = settings.billing_notify_retry_window_seconds
        self.poll_seconds = settings.billing_notify_poll_seconds
        rules = AccessRules(settings.past_due_grace(), access_clock)
        self.factory: sessionmaker[Session] = make_session_factory(engine, rules.session_info())
        self.lock = LeaderLock(engine, NOTIFIER_LOCK_KEY, "notifier")
        self.clock = clock
        self.http = httpx.Client(timeout=DELIVERY_TIMEOUT_SECONDS)
        self._in_flight: set[int] = set()  # user ids with a delivery running or unrecorded
        self._outcomes: list[tuple[Due, dict[str, Any]]] = []  # deliveries done, to record
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._housekept_at = 0.0

    def run(self, stop: threading.Event) -> None:
        """Send while leader, stand by otherwise, until `stop` is set (the deliveries in
        flight finish first). Survives any error: logs it, waits, tries again."""
        failures = 0
        with ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="notify") as pool:
            try:
                while not stop.is_set():
                    try:
                        leader = self.lock.acquire()
                        metrics.NOTIFIER_LEADER.set(1 if leader else 0)
                        if leader:
                            if self.urls:
                                self.record_outcomes()
                                self.submit_due(pool)
                            else:
                                self.settle_without_receivers()
                            self.housekeeping()
                        failures = 0
                    except Exception as error:  # the loop must outlive any failure
                        failures += 1
                        log.error("notifier failed; retrying", extra={"error": str(error)[:300]})
                        self.lock.release()
                        metrics.NOTIFIER_LEADER.set(0)
                    wait = self.poll_seconds * min(2**failures, 100)
                    self._wake.wait(wait)
                    self._wake.clear()
            finally:
                pool.shutdown(wait=True)
                self._record_last_outcomes()
                self.lock.release()
                metrics.NOTIFIER_LEADER.set(0)
                self.http.close()

    def submit_due(self, pool: ThreadPoolExecutor) -> int:
        """Start the deliveries due now, one per user, as many as there are free threads."""
        with self._guard:
            busy = set(self._in_flight)
        free = DELIVERY_THREADS - len(busy)
        if free <= 0:
            return 0
        due = self.due(busy, free)
        for notification in due:
            with self._guard:
                self._in_flight.add(notification.user_id)
            pool.submit(self._deliver_and_release, notification)
        return len(due)

    def settle_without_receivers(self) -> int:
        """With `BILLING_NOTIFY_URLS` unset, every pending row is delivered at once, in one
        statement: a transaction per row took SQLite's one writer from webhook deliveries as
        often as states changed."""
        with read_only(self.factory) as session:
            if session.scalar(select(_N.id).where(_PENDING).limit(1)) is None:
                return 0
        with transaction(self.factory) as session:
            settled = (
                session.connection()
                .execute(
                    update(_N)
                    .where(_PENDING)
                    .values(delivered_at=datetime.now(UTC), last_error=None)
                )
                .rowcount
            )
        metrics.NOTIFICATION_DELIVERIES.labels("delivered").inc(settled)
        return int(settled)

    def due(self, busy: set[int], limit: int) -> list[Due]:
        heads = select(func.min(_N.id)).where(_PENDING).group_by(_N.user_id)
        statement = (
            select(
                _N.id,
                _N.user_id,
                _N.payload,
                _N.delivered_to,
                _N.attempts,
                _N.created_at,
                func.coalesce(_N.replayed_at, _N.created_at),
            )
            .where(_N.id.in_(heads), _N.next_attempt_at <= self.clock())
            .order_by(_N.id)
            .limit(limit)
        )
        if busy:
            statement = statement.where(_N.user_id.not_in(busy))
        with read_only(self.factory) as session:
            return [Due(*row) for row in session.execute(statement)]

    def _deliver_and_release(self, notification: Due) -> None:
        try:
            self.deliver(notification)
        except Exception as error:  # the row stays due; the next round tries it again
            log.error("notification delivery failed", extra={"error": str(error)[:300]})
            with self._guard:
                self._in_flight.discard(notification.user_id)
        finally:
            self._wake.set()  # its outcome is recorded, and the user's next one may go

    def record_outcomes(self) -> int:
        """Record the deliveries done since the last turn in one transaction (on SQLite one
        turn of the single writer for all of them, not one each, taken from webhook
        deliveries), then let their users' next notifications go. If the write fails, they
        are recorded at a later turn; a sender stopped before that sends them again."""
        with self._guard:
            outcomes, self._outcomes = self._outcomes, []
        if not outcomes:
            return 0
        try:
            with transaction(self.factory) as session:
                for notification, values in outcomes:
                    session.execute(update(_N).where(_N.id == notification.id).values(**values))
        except Exception:
            with self._guard:
                self._outcomes = outcomes + self._outcomes
            raise
        with self._guard:
            self._in_flight.difference_update(n.user_id for n, _ in outcomes)
        return len(outcomes)

    def _record_last_outcomes(self) -> None:
        try:
            self.record_outcomes()
        except Exception as error:  # sent again after the restart: at least once
            log.error("could not record deliveries", extra={"error": str(error)[:300]})

    def deliver(self, notification: Due) -> bool:
        """POST to the URLs that have not answered 2xx yet; the outcome is recorded by the
        sender's next turn (`record_outcomes`)."""
        done = list(notification.delivered_to)
        errors = []
        body = body_of(notification.payload, notification.created_at)
        for url in self.urls:
            if url in done:
                continue
            error = self.post(url, message_id(notification), body)
            if error is None:
                done.append(url)
            else:
                errors.append(f"{shown_url(url)}: {error}")
        values = self.outcome(notification, done, errors)
        with self._guard:
            self._outcomes.append((notification, values))
        return not errors

    def post(self, url: str, msg_id: str, body: bytes) -> str | None:
        """One signed POST; None on a 2xx, else what went wrong (no secret in it)."""
        assert self.webhooks
        now = datetime.now(UTC)
        # A signature per secret, space-separated (Standard Webhooks): a receiver verifies
        # with any one of them, so a secret is rotated without a delivery failing.
        signatures = " ".join(webhook.sign(msg_id, now, body) for webhook in self.webhooks)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signatures,
        }
        try:
            # Only the status counts: the answer's body is never read, so a receiver that
            # sends one slowly (each read within the timeout) cannot hold the delivery.
            with self.http.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
        except Exception as error:  # any failure is this URL's: retried with backoff
            return f"{type(error).__name__}: {error}"[:200]
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    def outcome(self, notification: Due, done: list[str], errors: list[str]) -> dict[str, Any]:
        """The row's new values after a delivery (and its metrics and log line)."""
        now = self.clock()
        values: dict[str, Any] = {"delivered_to": done}
        created = utc(notification.created_at)
        if not errors:
            values["delivered_at"] = datetime.now(UTC)
            values["last_error"] = None
            metrics.NOTIFICATION_DELIVERIES.labels("delivered").inc()
            metrics.NOTIFY_DELIVERY_SECONDS.observe(max(0.0, now - created.timestamp()))
        else:
            attempts = notification.attempts + 1
            values["attempts"] = attempts
            values["last_error"] = "; ".join(errors)[:500]
            values["next_attempt_at"] = now + backoff_seconds(attempts, self.max_backoff)
            expired = now - utc(notification.queued_at).timestamp() >= self.retry_window
            if expired:
                values["expired_at"] = datetime.now(UTC)
            metrics.NOTIFICATION_DELIVERIES.labels("expired" if expired else "failed").inc()
            log.warning(
                "notification not delivered",
                extra={
                    "notification_id": notification.id,
                    "attempts": attempts,
                    "error": values["last_error"],
                    "expired": expired,
                },
            )
        return values

    def housekeeping(self) -> None:
        """Every few seconds: the documents whose grace ended recomputed (their `blocked`
        version is notified: time changed them, no row did), the pending metrics, and
        delivered rows past a week deleted."""
        now = self.clock()
        if now - self._housekept_at < HOUSEKEEPING_SECONDS:
            return
        self._housekept_at = now
        if recompute_ended_graces(self.factory):
            self._wake.set()  # their notifications are due now
        pending, oldest = pending_summary(self.factory)
        metrics.NOTIFICATIONS_PENDING.set(pending)
        metrics.NOTIFICATIONS_OLDEST_PENDING_AGE.set(
            0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())
        )
        with transaction(self.factory) as session:
            cutoff = datetime.now(UTC) - KEEP_DELIVERED
            session.execute(delete(_N).where(_N.delivered_at < cutoff))


def pending_summary(factory: sessionmaker[Session]) -> tuple[int, datetime | None]:
    """How many notifications wait for delivery, and when the oldest was written."""
    with read_only(factory) as session:
        count, oldest = session.execute(
            select(func.count(), func.min(_N.created_at)).where(_PENDING)
        ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(count), oldest
