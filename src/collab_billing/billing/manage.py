"""Managing a subscription: the customer portal (the `cancel` intent), and the overdue
invoice's hosted page (`pay_invoice`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.access import find_user, is_active, is_cancelable, is_overdue
from collab_billing.billing.errors import Conflict, NotFound
from collab_billing.db import invoice_queries, queries
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingCustomer, BillingSubscription
from collab_billing.stripe_gateway import StripeGateway


def open_cancel_portal(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int,
    subscription_id: int | str | None,
) -> str:
    """The URL of a portal session whose flow cancels the chosen subscription."""
    user = find_user(factory, github_user_id)
    with factory() as session, session.begin():
        subscriptions = queries.list_subscriptions_of_user(session, user.id)
        target = _choose_subscription(subscriptions, github_user_id, subscription_id)
        customer = session.get(BillingCustomer, target.billing_customer_id)
        assert customer is not None  # guaranteed by the foreign key
    return gateway.create_portal_cancel_session(
        customer_id=customer.stripe_customer_id, subscription_id=target.stripe_subscription_id
    )


def _choose_subscription(
    owned: Sequence[BillingSubscription],
    github_user_id: int,
    subscription_id: int | str | None,
) -> BillingSubscription:
    if subscription_id is None:
        return _only_cancelable(owned, github_user_id)
    matches = [s for s in owned if subscription_id in (s.id, s.stripe_subscription_id)]
    if not matches:
        raise NotFound(f"subscription {subscription_id} is not one of user {github_user_id}'s")
    target = matches[0]
    if not is_active(target):
        raise Conflict(
            f"subscription {subscription_id} is already {target.stripe_subscription_status}"
        )
    if target.stripe_cancel_at_period_end:
        raise Conflict(f"subscription {subscription_id} is already set to cancel at period end")
    return target


def _only_cancelable(
    owned: Sequence[BillingSubscription], github_user_id: int
) -> BillingSubscription:
    cancelable = [s for s in owned if is_cancelable(s)]
    if not cancelable:
        raise Conflict(f"user {github_user_id} has no active subscription to cancel")
    if len(cancelable) > 1:
        ids = ", ".join(f"{s.id} ({s.stripe_subscription_id})" for s in cancelable)
        raise Conflict(
            f"user {github_user_id} has several active subscriptions ({ids}): "
            "say which with subscription_id"
        )
    return cancelable[0]


def invoice_to_pay(
    factory: sessionmaker[Session],
    github_user_id: int,
    subscription_id: int | str | None,
    now: datetime,
) -> str:
    """The hosted page of the invoice the user should pay (the `pay_invoice` intent): the
    oldest overdue one (of `subscription_id` if given), else the oldest open one. Read from
    the mirror: no Stripe call, no portal."""
    user = find_user(factory, github_user_id)
    with read_only(factory) as session:
        invoices = list(invoice_queries.open_invoices(session, github_user_id))
        if subscription_id is not None:
            owned = queries.list_subscriptions_of_user(session, user.id)
            target = next(
                (s for s in owned if subscription_id in (s.id, s.stripe_subscription_id)), None
            )
            if target is None:
                raise NotFound(
                    f"subscription {subscription_id} is not one of user {github_user_id}'s"
                )
            invoices = [
                i for i in invoices if i.stripe_subscription_id == target.stripe_subscription_id
            ]
    payable = [i for i in invoices if i.hosted_invoice_url and i.amount_remaining > 0]
    payable.sort(key=lambda invoice: not is_overdue(invoice, now))  # stable: oldest first
    if not payable:
        raise Conflict(f"user {github_user_id} has no open invoice to pay")
    url = payable[0].hosted_invoice_url
    assert url is not None
    return url
