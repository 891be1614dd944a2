"""The usage sender: posts the outbox's pending records to Stripe as meter events.

Exactly once at Stripe, whatever fails:
- a record is marked `sent` only after Stripe answered it (committed in small batches);
- a crash between Stripe's answer and that commit sends the record again under the same
  `identifier` (derived from the record, see `usage.meter_event_identifier`): Stripe refuses
  the repeat as a duplicate, which the sender counts as sent;
- Stripe failing or rate limiting (5xx, 429, network), or refusing the key (401, 403), leaves
  the record pending with a backoff; a record Stripe refuses for good (another 4xx, e.g. older
  than 35 days) is `failed`, with Stripe's message.

One sender per database (its own leader lock, taken like the reconciler's). It sends at
`BILLING_USAGE_REQUESTS_PER_SECOND` (its own gateway throttle) with at most one call in flight
per (customer, meter), on a thread pool sized by rate x latency. A user without a Stripe
customer gets one (as checkout does) before their records are sent, outside any transaction.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import Engine, Table, bindparam, func, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from collab_billing import metrics
from collab_billing.billing.checkout import ensure_customer
from collab_billing.config import Settings
from collab_billing.db.engine import make_session_factory, read_only, transaction
from collab_billing.db.models import BillingCustomer, BillingMeter, BillingUsageEvent, User
from collab_billing.mirror.meters import sync_meters
from collab_billing.reconcile.leader import USAGE_SENDER_LOCK_KEY, LeaderLock
from collab_billing.state import outbox
from collab_billing.state.access import AccessRules, Clock, system_clock
from collab_billing.stripe_gateway import DuplicateMeterEvent, StripeGateway, StripeGatewayError

log = logging.getLogger(__name__)

MAX_WORKERS = 64
FLUSH_SECONDS = 0.25  # answered records are committed at least this often
# Meters are read again hourly: 720 reads in 30 days (every 5 minutes was 8,640, nearly
# all of the idle service's read budget). A new meter is taken at once by `resync`.
METERS_REFRESH_SECONDS = 3600.0
STATUS_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 300
IDLE_SECONDS = 1.0
# Plus every 5xx. 401 and 403 refuse the service's key, not the record: a key revoked or
# rotated is fixed by the operator, and the records wait for it instead of failing for good.
TRANSIENT_STATUSES = {None, 401, 403, 409, 429}


USAGE_TABLE: Table = BillingUsageEvent.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Due:
    """A pending record with what sending it needs."""

    id: int
    user_id: int
    github_user_id: int
    event_name: str
    value: Decimal
    timestamp: int
    identifier: str
    attempts: int
    customer: str | None
    customer_key: str | None
    value_key: str | None


@dataclass(frozen=True)
class Outcome:
    id: int
    status: str  # sent, failed, retry
    error: str | None = None
    attempts: int = 0


def _value_text(value: Decimal) -> str:
    return format(Decimal(value).normalize(), "f")


def _transient(error: StripeGatewayError) -> bool:
    status = error.http_status
    return status in TRANSIENT_STATUSES or (status is not None and status >= 500)


class UsageSender:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        gateway: StripeGateway | None = None,
        access_clock: Clock = system_clock,
    ) -> None:
        """`access_clock`: the service's "now", by which the state documents its writes
        change judge access (a record Stripe refuses no longer counts in the spend)."""
        rate = settings.billing_usage_requests_per_second
        self.rate = rate
        self.gateway = gateway or StripeGateway(
            settings, observer=metrics.observe_stripe_request, requests_per_second=rate
        )
        rules = AccessRules(settings.past_due_grace(), access_clock)
        self.factory: sessionmaker[Session] = make_session_factory(engine, rules.session_info())
        self.lock = LeaderLock(engine, key=USAGE_SENDER_LOCK_KEY, name="usage-sender")
        self.batch_size = max(200, min(5000, int(rate * 10)))
        self.latency = 0.1  # seconds per Stripe call, smoothed
        self._meters_read_at = -math.inf
        self._status_at = -math.inf
        self._latency_lock = threading.Lock()

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Send while leader; stand by otherwise; survive any failure with backoff."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    if not self.lock.acquire():
                        stop.wait(IDLE_SECONDS * 5)
                        continue
                    settled = self.send_batch(stop)
                    failures = 0
                    if settled == 0:
                        stop.wait(IDLE_SECONDS)
                except Exception as error:  # the loop must outlive any failure
                    failures += 1
                    log.error(
                        "usage sender failed; retrying",
                        extra={"consecutive_failures": failures, "error": str(error)[:300]},
                    )
                    self.lock.release()
                    stop.wait(min(2**failures, 60))
        finally:
            self.lock.release()

    def send_batch(self, stop: threading.Event | None = None) -> int:
        """Send one batch of due records; returns how many were settled (sent or failed)."""
        stop = stop or threading.Event()
        self._refresh_meters()
        due = self._due()
        if not due:
            self._publish_status(force=True)  # idle: the figures settle at their final values
            return 0
        due = self._with_customers(due)
        groups: dict[tuple[str, str], list[Due]] = defaultdict(list)
        outcomes: list[Outcome] = []
        for record in due:
            if record.customer_key is None or record.value_key is None:
                error = f"no active Stripe meter has event_name {record.event_name!r}"
                outcomes.append(Outcome(record.id, "failed", error, record.attempts + 1))
            elif record.customer is None:  # its customer could not be created: later
                error = "the user's Stripe customer could not be created yet"
                outcomes.append(Outcome(record.id, "retry", error, record.attempts + 1))
            else:
                groups[(record.customer, record.event_name)].append(record)
        settled = self._send_groups(list(groups.values()), outcomes, stop)
        self._publish_status()
        return settled

    def _send_groups(
        self, groups: list[list[Due]], outcomes: list[Outcome], stop: threading.Event
    ) -> int:
        results: list[Outcome] = outcomes
        results_lock = threading.Lock()
        settled = 0
        # Enough calls in flight to fill the rate at the latency seen (which includes the
        # throttle's waits, so it errs high), with room for slow answers; the gateway's
        # throttle, not the pool, keeps the rate.
        wanted = math.ceil(self.rate * self.latency * 2) + 2
        workers = max(1, min(len(groups), MAX_WORKERS, wanted))
        with ThreadPoolExecutor(workers, thread_name_prefix="usage") as pool:
            futures: list[Future[None]] = [
                pool.submit(self._send_group, group, results, results_lock, stop)
                for group in groups
            ]
            pending = set(futures)
            while pending:  # answers are committed every FLUSH_SECONDS, in one transaction
                _, pending = wait(pending, timeout=FLUSH_SECONDS)
                settled += self._flush(results, results_lock)
        settled += self._flush(results, results_lock)
        for future in futures:
            future.result()  # a bug in a group's thread surfaces here (and in the loop's log)
        return settled

    def _send_group(
        self,
        group: list[Due],
        results: list[Outcome],
        results_lock: threading.Lock,
        stop: threading.Event,
    ) -> None:
        """One (customer, meter)'s records, one call at a time, oldest first. A transient
        failure ends the group's turn: its later records wait until it is sent (`_due`)."""
        for record in group:
            if stop.is_set():
                return
            outcome = self._send(record)
            with results_lock:
                results.append(outcome)
            if outcome.status == "retry":
                return

    def _send(self, record: Due) -> Outcome:
        assert record.customer and record.customer_key and record.value_key
        started = time.monotonic()
        attempts = record.attempts + 1
        try:
            self.gateway.create_meter_event(
                event_name=record.event_name,
                payload={
                    record.customer_key: record.customer,
                    record.value_key: _value_text(record.value),
                },
                identifier=record.identifier,
                timestamp=record.timestamp,
            )
        except DuplicateMeterEvent:
            metrics.USAGE_SENT.labels("duplicate").inc()
            return Outcome(record.id, "sent", None, attempts)
        except StripeGatewayError as error:
            status = "retry" if _transient(error) else "failed"
            metrics.USAGE_SENT.labels(status).inc()
            return Outcome(record.id, status, error.message[:1000], attempts)
        finally:
            self._observe_latency(time.monotonic() - started)
        metrics.USAGE_SENT.labels("sent").inc()
        return Outcome(record.id, "sent", None, attempts)

    def _observe_latency(self, seconds: float) -> None:
        with self._latency_lock:
            self.latency = 0.9 * self.latency + 0.1 * seconds

    # -- the database -----------------------------------------------------------------------

    def _due(self) -> list[Due]:
        usage, meter, customer = BillingUsageEvent, BillingMeter, BillingCustomer
        now = int(time.time())
        # Of a `last` meter, a record waiting out a retry holds back the later ones of its
        # user: they reach Stripe in the order they were accepted, and Stripe bills the last
        # one it got of the newest second (as `state.spend` estimates). Other formulas do not
        # depend on the order: their records go on past a failed one, as do other users'.
        waiting = aliased(BillingUsageEvent)
        behind_a_retry = (
            select(waiting.id)
            .where(
                waiting.user_id == usage.user_id,
                waiting.meter_event_name == usage.meter_event_name,
                waiting.status == "pending",
                waiting.next_attempt_at > now,
                waiting.id < usage.id,
            )
            .exists()
        )
        statement = (
            select(
                usage.id,
                usage.user_id,
                User.github_user_id,
                usage.meter_event_name,
                usage.value,
                usage.timestamp,
                usage.identifier,
                usage.attempts,
                customer.stripe_customer_id,
                meter.customer_payload_key,
                meter.value_payload_key,
            )
            .join(User, User.id == usage.user_id)
            .outerjoin(
                customer,
                (customer.user_id == usage.user_id) & customer.stripe_deleted_at.is_(None),
            )
            .outerjoin(
                meter, (meter.event_name == usage.meter_event_name) & (meter.status == "active")
            )
            .where(
                usage.status == "pending",
                usage.next_attempt_at <= now,
                ~((func.coalesce(meter.aggregation_formula, "") == "last") & behind_a_retry),
            )
            .order_by(usage.id)
            .limit(self.batch_size)
        )
        with read_only(self.factory) as session:
            return [Due(*row) for row in session.execute(statement)]

    def _with_customers(self, due: Sequence[Due]) -> list[Due]:
        """Create the Stripe customer of each user that has none (once, as checkout does)."""
        missing = {record.user_id for record in due if record.customer is None}
        created: dict[int, str] = {}
        for user_id in sorted(missing):
            with read_only(self.factory) as session:
                user = session.get(User, user_id)
            if user is None:
                continue
            try:
                created[user_id] = ensure_customer(self.factory, self.gateway, user)
            except StripeGatewayError as error:
                log.warning("could not create the Stripe customer for usage", extra={
                    "github_user_id": user.github_user_id, "error": error.message})  # fmt: skip
        return [
            record if record.customer is not None else _replace_customer(record, created)
            for record in due
        ]

    def _flush(self, results: list[Outcome], results_lock: threading.Lock) -> int:
        with results_lock:
            taken = results[:]
            results.clear()
        if not taken:
            return 0
        now = int(time.time())
        table = USAGE_TABLE
        by_status: dict[str, list[dict[str, object]]] = defaultdict(list)
        for outcome in taken:
            by_status[outcome.status].append(
                {
                    "record_id": outcome.id,
                    "new_status": "pending" if outcome.status == "retry" else outcome.status,
                    "new_error": outcome.error,
                    "new_attempts": outcome.attempts,
                    "new_next": now + min(2 ** (outcome.attempts - 1), MAX_BACKOFF_SECONDS),
                }
            )
        pending = update(table).where(
            table.c.id == bindparam("record_id"), table.c.status == "pending"
        )
        settle = pending.values(
            status=bindparam("new_status"),
            error=bindparam("new_error"),
            attempts=bindparam("new_attempts"),
        )
        statements = {
            "sent": settle.values(sent_at=func.now()),
            "failed": settle,
            "retry": pending.values(
                error=bindparam("new_error"),
                attempts=bindparam("new_attempts"),
                next_attempt_at=bindparam("new_next"),
            ),
        }
        failed = [row["record_id"] for row in by_status.get("failed", [])]
        with transaction(self.factory) as session:
            connection = session.connection()
            for status, rows in by_status.items():
                connection.execute(statements[status], rows)
            if failed:  # no longer counted in the spend: a cap passed may be passed no more
                users = connection.execute(select(table.c.user_id).where(table.c.id.in_(failed)))
                outbox.mark(session, users=set(users.scalars()))
        return len(taken) - len(by_status.get("retry", []))

    def _refresh_meters(self) -> None:
        if time.monotonic() - self._meters_read_at < METERS_REFRESH_SECONDS:
            return
        sync_meters(self.factory, self.gateway)
        self._meters_read_at = time.monotonic()

    def _publish_status(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._status_at < STATUS_SECONDS:
            return
        self._status_at = time.monotonic()
        status = read_usage_status(self.factory)
        for name in ("pending", "sent", "failed"):
            metrics.USAGE_RECORDS.labels(name).set(status.counts.get(name, 0))
        metrics.USAGE_OLDEST_PENDING.set(status.oldest_pending_age or 0)


def _replace_customer(record: Due, created: dict[int, str]) -> Due:
    return replace(record, customer=created.get(record.user_id))


@dataclass
class UsageStatus:
    counts: dict[str, int]
    oldest_pending_age: float | None
    recent_failures: list[Failure]  # the newest five


class Failure(NamedTuple):
    github_user_id: int
    idempotency_key: str  # as the host app sent it
    event_name: str
    identifier: str  # the meter event's, at Stripe
    error: str | None


def read_usage_status(factory: sessionmaker[Session]) -> UsageStatus:
    usage = BillingUsageEvent
    with read_only(factory) as session:
        counts = {
            status: count
            for status, count in session.execute(
                select(usage.status, func.count()).group_by(usage.status)
            )
        }
        oldest = session.scalar(select(func.min(usage.created_at)).where(usage.status == "pending"))
        failures = session.execute(
            select(
                User.github_user_id,
                usage.idempotency_key,
                usage.meter_event_name,
                usage.identifier,
                usage.error,
            )
            .join(User, User.id == usage.user_id)
            .where(usage.status == "failed")
            .order_by(usage.id.desc())
            .limit(5)
        ).all()
    age = None
    if oldest is not None:  # SQLite gives naive datetimes: stored times are UTC
        stamp = (oldest if oldest.tzinfo else oldest.replace(tzinfo=UTC)).timestamp()
        age = max(0.0, time.time() - stamp)
    return UsageStatus(counts, age, [Failure(*row) for row in failures])
