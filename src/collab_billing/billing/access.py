"""Who the user is and what they have: reads of mirrored rows, never of Stripe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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


def subscription_kind(subscription: queries.SubscriptionRow) -> Literal["trial", "paid"]:
    """`trial` while trialing, and for a trial that ended without being paid for (canceled by
    its end, e.g. no card was added); `paid` once billing started."""
    status = subscription.stripe_subscription_status
    if status == "trialing":
        return "trial"
    trial_end, canceled_at = subscription.stripe_trial_end, subscription.stripe_canceled_at
    ended_in_trial = (
        status in ("canceled", "incomplete_expired")
        and trial_end is not None
        and canceled_at is not None
        and canceled_at <= trial_end
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
