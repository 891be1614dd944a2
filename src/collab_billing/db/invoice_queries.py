"""Reads of `billing_invoices` for one user: the open ones (access and the overdue gate) and
the pages of `GET /billing/invoices`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import BindParameter, Connection, Select, bindparam, or_, select
from sqlalchemy.orm import Session

from collab_billing.db.dialect import in_ids
from collab_billing.db.models import BillingCustomer, BillingInvoice, User


def _of_user(github_user_id: int | BindParameter[int]) -> Select[BillingInvoice]:
    return (
        select(BillingInvoice)
        .join(BillingCustomer, BillingInvoice.billing_customer_id == BillingCustomer.id)
        .join(User, User.id == BillingCustomer.user_id)
        .where(User.github_user_id == github_user_id)
    )


# Invoices still owed: open, and uncollectible (Stripe still takes a payment of those: else a
# user past due has nothing to pay; void one to forgive it). Only of the user's live Stripe
# customer: a deleted customer's invoices, which no one can pay, would block the user for good.
OWED_STATUSES = ("open", "uncollectible")
_PAYABLE = (
    BillingInvoice.status.in_(OWED_STATUSES)
    & BillingCustomer.stripe_deleted_at.is_(None)
    & or_(
        BillingInvoice.stripe_customer_id.is_(None),
        BillingInvoice.stripe_customer_id == BillingCustomer.stripe_customer_id,
    )
)


class OpenInvoice(NamedTuple):
    """A row of `USER_OPEN_INVOICES`, in its column order: what access, the overdue gate and
    the invoice to pay read of an open invoice."""

    stripe_invoice_id: str
    stripe_subscription_id: str | None
    status: str
    currency: str
    amount_remaining: int
    hosted_invoice_url: str | None
    attempt_count: int
    due_date: datetime | None
    finalized_at: datetime | None


# Built once (`db/queries.py` says why). Columns, not `BillingInvoice` objects: the admin API
# reads them on a plain connection (`engine.read_connection`), without a Session.
USER_OPEN_INVOICES = (
    _of_user(bindparam("github_user_id"))
    .with_only_columns(
        BillingInvoice.stripe_invoice_id,
        BillingInvoice.stripe_subscription_id,
        BillingInvoice.status,
        BillingInvoice.currency,
        BillingInvoice.amount_remaining,
        BillingInvoice.hosted_invoice_url,
        BillingInvoice.attempt_count,
        BillingInvoice.due_date,
        BillingInvoice.finalized_at,
    )
    .where(_PAYABLE)
    .order_by(BillingInvoice.stripe_created, BillingInvoice.stripe_invoice_id)
)


def open_invoices(db: Connection | Session, github_user_id: int) -> list[OpenInvoice]:
    """The user's open invoices (of their live Stripe customer), oldest first."""
    rows = db.execute(USER_OPEN_INVOICES, {"github_user_id": github_user_id})
    return [OpenInvoice._make(row) for row in rows]


# Built once (`db/queries.py` says why).
CUSTOMERS_OPEN_INVOICES = (
    select(BillingInvoice)
    .join(BillingCustomer, BillingInvoice.billing_customer_id == BillingCustomer.id)
    .where(in_ids(BillingInvoice.billing_customer_id), _PAYABLE)
    .order_by(BillingInvoice.stripe_created, BillingInvoice.stripe_invoice_id)
    .execution_options(populate_existing=True)
)


def customers_open_invoices(
    session: Session, billing_customer_ids: Sequence[int]
) -> dict[int, list[BillingInvoice]]:
    """These customers' open invoices (by our customer id), oldest first, in one statement.
    Read as stored now (`populate_existing`): the applier writes invoices with Core upserts,
    which leave objects already in the session as they were."""
    if not billing_customer_ids:
        return {}
    rows = session.scalars(CUSTOMERS_OPEN_INVOICES, {"ids": billing_customer_ids})
    grouped: dict[int, list[BillingInvoice]] = {}
    for invoice in rows:
        grouped.setdefault(invoice.billing_customer_id, []).append(invoice)
    return grouped


def invoice_page(
    session: Session, github_user_id: int, limit: int, after: str | None
) -> tuple[Sequence[BillingInvoice], bool] | None:
    """Up to `limit` of the user's invoices, newest first (Stripe's `created`, then id),
    starting after the invoice `after`; and whether more follow. None: `after` is not one
    of the user's invoices."""
    query = _of_user(github_user_id)
    if after is not None:
        anchor = session.scalars(query.where(BillingInvoice.stripe_invoice_id == after)).first()
        if anchor is None:
            return None
        query = query.where(
            or_(
                BillingInvoice.stripe_created < anchor.stripe_created,
                (BillingInvoice.stripe_created == anchor.stripe_created)
                & (BillingInvoice.stripe_invoice_id < anchor.stripe_invoice_id),
            )
        )
    rows = session.scalars(
        query.order_by(
            BillingInvoice.stripe_created.desc(), BillingInvoice.stripe_invoice_id.desc()
        ).limit(limit + 1)
    ).all()
    return rows[:limit], len(rows) > limit
