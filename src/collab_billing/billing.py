"""What the billing routes do: typed steps from a request to Stripe and to rows.

Stripe calls never run inside a database transaction: a slow Stripe must not hold locks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db import queries
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingCustomer, BillingSubscription, User
from collab_billing.stripe_gateway import StripeGateway


class BillingError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BillingError):
    status_code = 404


class Conflict(BillingError):
    status_code = 409


def find_user(factory: sessionmaker[Session], github_user_id: int) -> User:
    with read_only(factory) as session:
        return _require_user(session, github_user_id)


def _require_user(session: Session, github_user_id: int) -> User:
    user = queries.get_user_by_github_user_id(session, github_user_id)
    if user is None:
        raise _unknown_user(github_user_id)
    return user


def _unknown_user(github_user_id: int) -> NotFound:
    return NotFound(f"no user with github_user_id {github_user_id}: create it with POST /users")


def ensure_customer(factory: sessionmaker[Session], gateway: StripeGateway, user: User) -> str:
    """The user's live Stripe customer id, creating the customer (once) when there is none."""
    with factory() as session, session.begin():
        existing = queries.get_billing_customer_by_user_id(session, user.id)
        if existing is not None and existing.stripe_deleted_at is None:
            return existing.stripe_customer_id
        replaced = existing.stripe_customer_id if existing is not None else ""
    customer_id = gateway.create_customer(
        github_user_id=user.github_user_id,
        github_login=user.github_login,
        email=user.email_address,
        idempotency_key=_customer_idempotency_key(user, replaced),
    )
    with factory() as session, session.begin():
        return queries.link_billing_customer(session, user.id, customer_id).stripe_customer_id


def _customer_idempotency_key(user: User, replaced_customer_id: str) -> str:
    # Same user and same details -> same key, so concurrent requests create one customer.
    material = f"{user.id}|{user.github_user_id}|{user.github_login}|{user.email_address}"
    digest = hashlib.sha256(f"{material}|{replaced_customer_id}".encode()).hexdigest()[:24]
    return f"collab-billing-customer-{user.id}-{digest}"


def start_checkout(
    factory: sessionmaker[Session], gateway: StripeGateway, price_id: str, github_user_id: int
) -> str:
    user = find_user(factory, github_user_id)
    with factory() as session, session.begin():
        active = [s for s in queries.list_subscriptions_of_user(session, user.id) if is_active(s)]
    if active:
        raise Conflict(
            f"user {github_user_id} already has an active subscription "
            f"({active[0].stripe_subscription_id}, {active[0].stripe_subscription_status})"
        )
    customer_id = ensure_customer(factory, gateway, user)
    return gateway.create_checkout_session(
        customer_id=customer_id,
        price_id=price_id,
        client_reference_id=str(user.github_user_id),
        github_user_id=user.github_user_id,
    )


def is_active(subscription: BillingSubscription | queries.SubscriptionRow) -> bool:
    return subscription.stripe_subscription_status in queries.ACTIVE_STATUSES


def is_cancelable(subscription: BillingSubscription | queries.SubscriptionRow) -> bool:
    return is_active(subscription) and not subscription.stripe_cancel_at_period_end


def open_cancel_portal(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int,
    subscription_id: int | str | None,
) -> str:
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


def list_user_subscriptions(
    factory: sessionmaker[Session], github_user_id: int
) -> list[queries.SubscriptionRow]:
    """The hot read path ("is this user paying?"): one statement."""
    with read_only(factory) as session:
        rows = queries.read_user_subscriptions(session, github_user_id)
    if rows is None:
        raise _unknown_user(github_user_id)
    return rows
