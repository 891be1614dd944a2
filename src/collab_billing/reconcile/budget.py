"""The read budget: Stripe's read allowance, and how much of it the service has spent.

Reads (every GET through the gateway, recorded by each process: `record_reads`) and
transactions (`is_transaction`, counted in the transaction that claims their events, so each
once) are kept in one row per UTC day, across restarts. How the cadence spends the budget:
docs/reconciliation.md, "Freshness and the read budget".
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.dialect import insert
from collab_billing.db.engine import read_only, transaction
from collab_billing.db.models import StripeReadDay
from collab_billing.stripe_gateway import Event, EventShapeError
from collab_billing.stripe_gateway.throttle import READS

log = logging.getLogger(__name__)

DAY_SECONDS = 86_400
WINDOW_DAYS = 30
WINDOW_SECONDS = WINDOW_DAYS * DAY_SECONDS
MIN_ALLOWANCE = 10_000
READS_PER_TRANSACTION = 500
TRANSACTION_EVENT_TYPES = frozenset({"invoice.paid", "checkout.session.completed"})
# Idle (safety) polling may spend this share of the budget; the rest is kept for fast polls.
IDLE_SHARE = 0.75
# Reads are counted in memory and written this often (and when a loop or a drain ends).
RECORD_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class Budget:
    reads_30d: int
    transactions_30d: int
    share: float

    @property
    def allowance(self) -> int:
        """Stripe's: max(10,000, 500 x transactions) reads over 30 days."""
        return max(MIN_ALLOWANCE, READS_PER_TRANSACTION * self.transactions_30d)

    @property
    def allowed(self) -> int:
        """What the service lets itself spend: `share` of Stripe's allowance."""
        return int(self.allowance * self.share)

    @property
    def exhausted(self) -> bool:
        return self.reads_30d >= self.allowed

    @property
    def idle_share_spent(self) -> bool:
        return self.reads_30d >= self.allowed * IDLE_SHARE

    def idle_interval(self) -> float:
        """The shortest idle poll interval (one read each) that spends `IDLE_SHARE` of the
        budget over 30 days."""
        return WINDOW_SECONDS / max(1.0, self.allowed * IDLE_SHARE)

    def over_budget_interval(self) -> float:
        """Once the budget is spent: half the pace that spends it exactly, until old reads
        leave the 30-day window."""
        return 2 * WINDOW_SECONDS / max(1, self.allowed)


def day_of(timestamp: float) -> int:
    return int(timestamp // DAY_SECONDS)


def _add(session: Session, day: int, reads: int = 0, transactions: int = 0) -> None:
    statement = insert(session, StripeReadDay).values(
        day=day, reads=reads, transactions=transactions
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["day"],
            set_={
                "reads": StripeReadDay.reads + statement.excluded.reads,
                "transactions": StripeReadDay.transactions + statement.excluded.transactions,
            },
        )
    )


def flush_reads(factory: sessionmaker[Session], now: float) -> None:
    """Record the reads this process made since the last flush (on failure they are kept for
    the next one)."""
    count = READS.take()
    if not count:
        return
    try:
        with transaction(factory) as session:
            _add(session, day_of(now), reads=count)
    except Exception:
        READS.add(count)
        raise


def flush_reads_or_log(factory: sessionmaker[Session], now: float) -> None:
    """`flush_reads` for a loop or a request that must go on when the database is down: the
    reads are kept for the next flush and the failure is logged."""
    try:
        flush_reads(factory, now)
    except Exception as error:
        log.warning("could not record Stripe reads: %s", type(error).__name__)


def record_reads(factory: sessionmaker[Session], stop: threading.Event) -> None:
    """Until `stop` is set, then once more: this process's reads recorded every
    `RECORD_EVERY_SECONDS` (the API's own reads count too); a process killed loses at most
    that long of them."""
    while not stop.wait(RECORD_EVERY_SECONDS):
        flush_reads_or_log(factory, time.time())
    flush_reads_or_log(factory, time.time())


class _Charge(msgspec.Struct):
    amount_paid: int = 0  # an invoice
    mode: str | None = None  # a Checkout session
    payment_status: str | None = None


def is_transaction(event: Event) -> bool:
    """A successful charge: an invoice paid with money, or a one-off (payment mode) Checkout
    paid. A subscription's Checkout is its first invoice's charge, not a second one."""
    if event.type not in TRANSACTION_EVENT_TYPES:
        return False
    try:
        charge = event.object_as(_Charge)
    except EventShapeError:
        return False  # the applier reports the malformed event
    if event.type == "invoice.paid":
        return charge.amount_paid > 0
    return charge.mode == "payment" and charge.payment_status == "paid"


def count_transactions(session: Session, events: Sequence[Event]) -> None:
    """In the transaction that claims `events`: the transactions among them, by the day of
    their `created`."""
    days = Counter(day_of(e.created) for e in events if is_transaction(e))
    for day, count in days.items():
        _add(session, day, transactions=count)


def read_budget(factory: sessionmaker[Session], now: float, share: float) -> Budget:
    first_day = day_of(now) - WINDOW_DAYS + 1
    with read_only(factory) as session:
        reads, transactions = session.execute(
            select(
                func.coalesce(func.sum(StripeReadDay.reads), 0),
                func.coalesce(func.sum(StripeReadDay.transactions), 0),
            ).where(StripeReadDay.day >= first_day)
        ).one()
    return Budget(int(reads), int(transactions), share)
