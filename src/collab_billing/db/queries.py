"""Typed queries used by the API and the reconciler. Sessions are passed in by the caller."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from collab_billing.db.models import BillingCustomer, BillingSubscription, User

# Statuses in which the user is (still) entitled to the product.
ACTIVE_STATUSES = frozenset({"active", "trialing", "past_due"})


def get_user_by_github_user_id(session: Session, github_user_id: int) -> User | None:
    return session.scalars(select(User).where(User.github_user_id == github_user_id)).first()


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.id)).all()


def upsert_user(
    session: Session, github_user_id: int, github_login: str, email_address: str | None
) -> tuple[User, bool]:
    """Create or update a user; returns the user and whether it was created."""
    user = get_user_by_github_user_id(session, github_user_id)
    created = user is None
    if user is None:
        user = User(github_user_id=github_user_id, github_login=github_login)
        session.add(user)
    user.github_login = github_login
    user.email_address = email_address
    session.flush()
    return user, created


def get_billing_customer_by_user_id(session: Session, user_id: int) -> BillingCustomer | None:
    return session.scalars(
        select(BillingCustomer).where(BillingCustomer.user_id == user_id)
    ).first()


def list_subscriptions_of_user(session: Session, user_id: int) -> Sequence[BillingSubscription]:
    return session.scalars(
        select(BillingSubscription)
        .join(BillingCustomer, BillingSubscription.billing_customer_id == BillingCustomer.id)
        .where(BillingCustomer.user_id == user_id)
        .order_by(BillingSubscription.id)
    ).all()


def link_billing_customer(
    session: Session, user_id: int, stripe_customer_id: str
) -> BillingCustomer:
    """Record the user's Stripe customer once, even when two requests race to do it.

    The insert is guarded by the unique `user_id`: the loser of a race reads the winner's row.
    """
    existing = get_billing_customer_by_user_id(session, user_id)
    if existing is not None and existing.stripe_deleted_at is None:
        return existing
    if existing is not None:
        # The old customer was deleted on Stripe; the user's row moves to the new one.
        existing.stripe_customer_id = stripe_customer_id
        existing.stripe_deleted_at = None
        session.flush()
        return existing
    try:
        with session.begin_nested():
            customer = BillingCustomer(user_id=user_id, stripe_customer_id=stripe_customer_id)
            session.add(customer)
    except IntegrityError:
        winner = get_billing_customer_by_user_id(session, user_id)
        if winner is None:
            raise
        return winner
    return customer
