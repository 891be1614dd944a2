"""Who the user is and what they have: reads of mirrored rows, never of Stripe."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import RowMapping
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.errors import unknown_user
from collab_billing.db import queries
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingSubscription, User


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
    return is_active(subscription) and not subscription.stripe_cancel_at_period_end


def list_user_subscriptions(
    factory: sessionmaker[Session], github_user_id: int
) -> list[queries.SubscriptionRow]:
    """The user's subscriptions, oldest first (one indexed statement: the hot read)."""
    with read_only(factory) as session:
        rows = queries.user_subscriptions(session, github_user_id)
    if rows is None:
        raise unknown_user(github_user_id)
    return rows
