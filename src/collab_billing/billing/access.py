"""Who the user is and what they have: reads of mirrored rows, never of Stripe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import RowMapping
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import NotFound, overdue_invoice, unknown_user
from collab_billing.db import invoice_queries, queries
from collab_billing.db.engine import read_connection, read_only
from collab_billing.db.invoice_queries import OpenInvoice
from collab_billing.db.models import BillingInvoice, BillingSubscription, User

# Re-exported: the one access decision lives below the services, where the state document
# can use it too (the services import the reconciler, which writes state documents).
from collab_billing.state.access import Access as Access
from collab_billing.state.access import AccessState as AccessState
from collab_billing.state.access import decide_access as decide_access
from collab_billing.state.access import is_overdue as is_overdue


def list_sellable_prices(
    factory: sessionmaker[Session], lookup_keys: Sequence[str] | None
) -> list[RowMapping]:
    """The catalog as mirrored from Stripe: what a checkout may sell."""
    with read_only(factory) as session:
        return queries.sellable_prices(session, lookup_keys)


def find_user(factory: sessionmaker[Session], github_user_id: int) -> User:
    with read_only(factory) as session:
        user = queries.get_user_by_github_user_id(session, github_user_id)
    if user is None:
        raise unknown_user(github_user_id)
    return user


def is_active(subscription: BillingSubscription | queries.SubscriptionRow) -> bool:
    return subscription.stripe_subscription_status in queries.ACTIVE_STATUSES


def is_cancelable(subscription: BillingSubscription | queries.SubscriptionRow) -> bool:
    """Active and not set to end already (at the period's end, or at a `cancel_at` date)."""
    set_to_end = subscription.stripe_cancel_at_period_end or subscription.stripe_cancel_at
    return is_active(subscription) and not set_to_end


def subscription_kind(subscription: queries.SubscriptionRow) -> Literal["trial", "paid"]:
    """`trial` while trialing, and for a trial that ended without being paid for (canceled
    with the trial as its last period, e.g. no card was added); `paid` once billing started
    (a paid period followed the trial). `canceled_at` cannot tell: it is when the
    cancellation was asked for, which may be during the trial for a period paid after it."""
    status = subscription.stripe_subscription_status
    if status == "trialing":
        return "trial"
    trial_end, period_end = subscription.stripe_trial_end, subscription.stripe_current_period_end
    ended_in_trial = (
        status in ("canceled", "incomplete_expired")
        and trial_end is not None
        and period_end is not None
        and period_end <= trial_end
    )
    return "trial" if ended_in_trial else "paid"


def list_user_subscriptions(
    factory: sessionmaker[Session], github_user_id: int
) -> list[queries.SubscriptionRow]:
    """The user's subscriptions, oldest first (one indexed statement: the hot read)."""
    with read_only(factory) as session:
        rows = queries.user_subscriptions(session, github_user_id)
    if rows is None:
        raise unknown_user(github_user_id)
    return rows


# --- access: may the user use the product right now? (decided in `state.access`) -----------


@dataclass(frozen=True)
class BillingView:
    """What `GET /billing/subscriptions` shows: rows, the access they give, what is overdue."""

    subscriptions: list[queries.SubscriptionRow]
    access: Access
    overdue_invoices: list[OpenInvoice]


def billing_view(
    factory: sessionmaker[Session], github_user_id: int, now: datetime, grace: timedelta
) -> BillingView:
    """The user's subscriptions (oldest first), access and overdue invoices (oldest first)."""
    with read_connection(factory) as connection:
        rows = queries.user_subscriptions(connection, github_user_id)
        if rows is None:
            raise unknown_user(github_user_id)
        invoices = invoice_queries.open_invoices(connection, github_user_id) if rows else []
    access = decide_access(rows, invoices, now, grace)
    overdue = [invoice for invoice in invoices if is_overdue(invoice, now)]
    return BillingView(rows, access, overdue)


def overdue_invoices(
    factory: sessionmaker[Session], github_user_id: int, now: datetime
) -> list[OpenInvoice]:
    """The user's overdue invoices, oldest first."""
    with read_only(factory) as session:
        invoices = invoice_queries.open_invoices(session, github_user_id)
    return [invoice for invoice in invoices if is_overdue(invoice, now)]


def refuse_if_overdue(factory: sessionmaker[Session], github_user_id: int, now: datetime) -> None:
    overdue = overdue_invoices(factory, github_user_id, now)
    if overdue:
        first = overdue[0]
        raise overdue_invoice(
            github_user_id,
            first.stripe_invoice_id,
            first.amount_remaining,
            first.currency,
            first.hosted_invoice_url,
        )


def list_user_invoices(
    factory: sessionmaker[Session], github_user_id: int, limit: int, after: str | None
) -> tuple[Sequence[BillingInvoice], bool]:
    """A page of the user's invoices, newest first, after the invoice `after`."""
    with read_only(factory) as session:
        if queries.get_user_by_github_user_id(session, github_user_id) is None:
            raise unknown_user(github_user_id)
        page = invoice_queries.invoice_page(session, github_user_id, limit, after)
    if page is None:
        raise NotFound(f"cursor {after} is not an invoice of user {github_user_id}")
    return page
