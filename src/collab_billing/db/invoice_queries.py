"""Reads of `billing_invoices` for one user: the open ones (access and the overdue gate) and
the pages of `GET /billing/invoices`."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import BindParameter, Select, bindparam, or_, select
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


# Invoices still owed: open ones, and those marked uncollectible, which Stripe still takes a
# payment of (a user left past due with one had nothing to pay and stayed blocked). Void one
# to forgive it. Only while its Stripe customer is the user's live one: a customer deleted on
# Stripe (the user's row kept as a tombstone, or moved to a new customer by a later Checkout)
# leaves invoices no one can pay, which blocked the user for good.
OWED_STATUSES = ("open", "uncollectible")
_PAYABLE = (
    BillingInvoice.status.in_(OWED_STATUSES)
    & BillingCustomer.stripe_deleted_at.is_(None)
    & or_(
        BillingInvoice.stripe_customer_id.is_(None),
        BillingInvoice.stripe_customer_id == BillingCustomer.stripe_customer_id,
    )
)

# Built once (`db/queries.py` says why).
USER_OPEN_INVOICES = (
    _of_user(bindparam("github_user_id"))
    .where(_PAYABLE)
    .order_by(BillingInvoice.stripe_created, BillingInvoice.stripe_invoice_id)
)


def open_invoices(session: Session, github_user_id: int) -> Sequence[BillingInvoice]:
    """The user's open invoices (of their live Stripe customer), oldest first."""
    return session.scalars(USER_OPEN_INVOICES, {"github_user_id": github_user_id}).all()


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
