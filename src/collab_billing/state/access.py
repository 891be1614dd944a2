"""Access: may the user use the product right now? One decision, from mirrored rows and a time.

`decide_access` is the only place that decides it: `GET /billing/subscriptions` (through
`billing.access`) and the state document (`state.document`) both call it.

Time: access changes with time alone (a grace period ends), so every judgement is made at a
"now" from one injected clock (`AccessRules.clock`): the system clock in production, the
emulator's clock in dev mode (`create_app(clock=...)`), a test clock in tests. The rules travel
with the session factory (`AccessRules.session_info`), so that whatever commits a change (the
API, the reconciler, the notification sender's sweep) judges the state documents it writes by
the same clock and grace as the API's reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from collab_billing.db import queries
from collab_billing.db.invoice_queries import OWED_STATUSES, OpenInvoice
from collab_billing.db.models import BillingInvoice

Clock = Callable[[], datetime]
AccessState = Literal["active", "grace", "blocked", "none"]
_RANK: dict[AccessState, int] = {"none": 0, "blocked": 1, "grace": 2, "active": 3}
DEFAULT_GRACE = timedelta(days=3)  # BILLING_PAST_DUE_GRACE_DAYS' default
_RULES_KEY = "collab_billing.access_rules"


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AccessRules:
    """How access is judged: the grace after a failed payment, and the clock that says now."""

    grace: timedelta = DEFAULT_GRACE
    clock: Clock = field(default=system_clock)

    def session_info(self) -> dict[str, Any]:
        """For `make_session_factory(engine, info=...)`: its sessions judge by these rules."""
        return {_RULES_KEY: self}


def rules_of(session: Session) -> AccessRules:
    """The rules of the session's factory; the defaults (system clock, 3 days) when none."""
    rules = session.info.get(_RULES_KEY)
    return rules if isinstance(rules, AccessRules) else AccessRules()


@dataclass(frozen=True)
class Access:
    state: AccessState
    until: datetime | None = None  # grace: when it ends

    @property
    def allows_use(self) -> bool:
        return self.state in ("active", "grace")


def utc(value: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones, all UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Invoice = BillingInvoice | OpenInvoice  # the state documents read objects; the API, rows


def is_overdue(invoice: Invoice, now: datetime) -> bool:
    """Owed and late: marked uncollectible, or open with a failed payment or a passed due
    date. An invoice marked uncollectible that was never charged nor due is no debt: it is
    the period that `pause_collection` (`mark_uncollectible`) gives free, which Stripe
    finalizes and writes off at once without asking the user to pay it."""
    if invoice.status not in OWED_STATUSES or invoice.amount_remaining <= 0:
        return False
    if invoice.status == "uncollectible" and invoice.attempt_count == 0:
        return invoice.due_date is not None and utc(invoice.due_date) <= now
    return (
        invoice.status == "uncollectible"
        or invoice.attempt_count > 0
        or (invoice.due_date is not None and utc(invoice.due_date) <= now)
    )


def _overdue_since(invoice: Invoice, now: datetime) -> datetime | None:
    """When the invoice made its subscription past due: its due date, once passed, for one sent
    to be paid (`send_invoice`: Stripe makes the subscription `past_due` when it is not paid by
    then, weeks after it was finalized); else its finalization, when an automatic invoice is
    charged (and its first payment failed)."""
    if invoice.due_date is not None and utc(invoice.due_date) <= now:
        return utc(invoice.due_date)
    return utc(invoice.finalized_at) if invoice.finalized_at is not None else None


def decide_access(
    subscriptions: Sequence[queries.SubscriptionRow],
    open_invoices: Sequence[Invoice],
    now: datetime,
    grace: timedelta,
) -> Access:
    """The user's access from mirrored rows alone, judged at `now` (never stored, so it cannot
    get stuck: paying the invoice changes the rows, and the next read says `active`).

    Per subscription: `active`/`trialing` -> active; `past_due` -> grace until `grace` after
    the first failed payment of its open invoice (its finalization: an automatic invoice is
    charged when finalized; a sent one's due date, once passed; with none open, the period's
    start), blocked after; `unpaid` ->
    blocked; `canceled` for `payment_failed` with an invoice of it still open after a failed
    payment -> blocked; anything else -> none. The user gets the best of their subscriptions
    (of several graces, the one that ends last)."""
    best = Access("none")
    for subscription in subscriptions:
        access = _access_of(subscription, open_invoices, now, grace)
        if _grants_more(access, best):
            best = access
    return best


def grants_access(
    subscription: queries.SubscriptionRow,
    open_invoices: Sequence[Invoice],
    now: datetime,
    grace: timedelta,
) -> bool:
    """Whether this subscription alone allows use at `now` (`active` or `grace`, as
    `decide_access` judges it): its products' features are served only then."""
    return _access_of(subscription, open_invoices, now, grace).allows_use


def first_grace_end(
    subscriptions: Sequence[queries.SubscriptionRow],
    open_invoices: Sequence[Invoice],
    now: datetime,
    grace: timedelta,
) -> datetime | None:
    """The earliest end, after `now`, of a grace of one of these subscriptions (None: none in
    grace, or none with a known end). Time alone may change the state document then, even
    while another subscription keeps access `active`: the subscription ending its grace
    stops giving its features (`state.features`)."""
    accesses = (_access_of(s, open_invoices, now, grace) for s in subscriptions)
    return min((access.until for access in accesses if access.until is not None), default=None)


def _access_of(
    subscription: queries.SubscriptionRow,
    open_invoices: Sequence[Invoice],
    now: datetime,
    grace: timedelta,
) -> Access:
    """The subscription's own access, judged with its own open invoices (of all these)."""
    owed = [
        invoice
        for invoice in open_invoices
        if invoice.stripe_subscription_id == subscription.stripe_subscription_id
    ]
    return _subscription_access(subscription, owed, now, grace)


def _grants_more(access: Access, than: Access) -> bool:
    """A better state; of two graces, the one that ends last (one with no end, longest): the
    user keeps access until every grace has ended."""
    if access.state == than.state == "grace":
        return than.until is not None and (access.until is None or access.until > than.until)
    return _RANK[access.state] > _RANK[than.state]


def _subscription_access(
    subscription: queries.SubscriptionRow,
    owed: Sequence[Invoice],
    now: datetime,
    grace: timedelta,
) -> Access:
    status = subscription.stripe_subscription_status
    if status in ("active", "trialing"):
        return Access("active")
    if status == "unpaid":
        return Access("blocked")
    failed = [invoice for invoice in owed if is_overdue(invoice, now)]
    if status == "canceled":
        for_payment = subscription.stripe_cancellation_reason == "payment_failed"
        return Access("blocked") if failed and for_payment else Access("none")
    if status != "past_due":
        return Access("none")
    started = [when for invoice in failed if (when := _overdue_since(invoice, now)) is not None]
    if not started and subscription.stripe_current_period_start is not None:
        # No overdue invoice (its events on their way, or it was voided while Stripe keeps the
        # subscription past due): the failure is dated by the period's start (its invoice was
        # charged about an hour later, once its draft was finalized). Grace ends; it is never
        # endless.
        started = [utc(subscription.stripe_current_period_start)]
    if not started:
        return Access("grace")  # nothing to date the failure by
    until = min(started) + grace
    return Access("grace", until) if now < until else Access("blocked")
