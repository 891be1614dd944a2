"""Which subscription an intent of `POST /billing/subscriptions/manage` acts on: the one
named (404 if not the user's, 409 if it does not fit the intent), or the user's only fitting
one (409 if none, or several: the answer lists them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.access import find_user, is_active, is_cancelable
from collab_billing.billing.errors import Conflict, NotFound
from collab_billing.db import queries
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingCustomer, BillingSubscription

ENDED = frozenset({"canceled", "incomplete_expired"})


@dataclass(frozen=True)
class ManageRequest:
    github_user_id: int
    intent: str
    subscription_id: int | str | None = None
    price: str | None = None
    quantity: int | None = None


# Each says why a subscription does not fit the intent (None: it fits).
Check = Callable[[BillingSubscription], str | None]


def why_not_cancelable(sub: BillingSubscription) -> str | None:
    if sub.stripe_subscription_status in ENDED:
        return f"has already ended ({sub.stripe_subscription_status})"
    if not is_active(sub):
        return f"is {sub.stripe_subscription_status}"
    if not is_cancelable(sub):
        return "is already set to cancel"
    return None


def why_not_changeable(sub: BillingSubscription) -> str | None:
    return None if is_active(sub) else f"is {sub.stripe_subscription_status}"


def why_not_stoppable(sub: BillingSubscription) -> str | None:
    if sub.stripe_subscription_status in ENDED:
        return f"has already ended ({sub.stripe_subscription_status})"
    if not sub.stripe_cancel_at_period_end and sub.stripe_cancel_at is None:
        return "is not scheduled to cancel"
    return None


def why_not_trialing(sub: BillingSubscription) -> str | None:
    status = sub.stripe_subscription_status
    return None if status == "trialing" else f"is not in a trial ({status})"


def target_of(
    factory: sessionmaker[Session], request: ManageRequest, check: Check, fitting: str
) -> tuple[str, BillingSubscription]:
    """The Stripe customer and the subscription the intent acts on: the one named (404 if not
    the user's, 409 if it does not fit) or the user's only fitting one (409 if none or several)."""
    user = find_user(factory, request.github_user_id)
    with read_only(factory) as session:
        owned = queries.list_subscriptions_of_user(session, user.id)
        target = choose(owned, request, check, fitting)
        customer = session.get(BillingCustomer, target.billing_customer_id)
        assert customer is not None  # guaranteed by the foreign key
        return customer.stripe_customer_id, target


def choose(
    owned: Sequence[BillingSubscription], request: ManageRequest, check: Check, fitting: str
) -> BillingSubscription:
    who, wanted = request.github_user_id, request.subscription_id
    if wanted is not None:
        matches = [s for s in owned if wanted in (s.id, s.stripe_subscription_id)]
        if not matches:
            raise NotFound(f"subscription {wanted} is not one of user {who}'s")
        reason = check(matches[0])
        if reason is not None:
            raise Conflict(f"subscription {wanted} {reason}")
        return matches[0]
    fits = [s for s in owned if check(s) is None]
    if not fits:  # say why the user's live subscriptions do not fit
        why = [
            f"{s.stripe_subscription_id} {reason}"
            for s in owned
            if s.stripe_subscription_status not in ENDED and (reason := check(s))
        ]
        raise Conflict(f"user {who} has no {fitting}" + (f": {'; '.join(why)}" if why else ""))
    if len(fits) > 1:
        ids = ", ".join(f"{s.id} ({s.stripe_subscription_id})" for s in fits)
        raise Conflict(
            f"user {who} has more than one {fitting} ({ids}): say which with subscription_id"
        )
    return fits[0]


def customer_of(factory: sessionmaker[Session], request: ManageRequest) -> str:
    """The user's Stripe customer, for the intents of the whole account (a `subscription_id`
    given must still be the user's: 404 otherwise)."""
    user = find_user(factory, request.github_user_id)
    with read_only(factory) as session:
        if request.subscription_id is not None:
            owned = queries.list_subscriptions_of_user(session, user.id)
            choose(owned, request, lambda _: None, "subscription")
        customer = queries.get_billing_customer_by_user_id(session, user.id)
        if customer is None or customer.stripe_deleted_at is not None:
            raise Conflict(
                f"user {request.github_user_id} has no Stripe customer yet: check out first"
            )
        return customer.stripe_customer_id
