"""The state document of a user: everything the host app needs to know in one read.

`GET /billing/state` renders it and every `billing.state.updated` notification carries it.
It is computed from mirrored rows only (never from Stripe), for many users in a few
statements, so that the outbox (`state.outbox`) can recompute it inside the transaction that
changed the rows. Its `version` is stored beside the last document (`billing_states`) and grows
by one each time the document changes.

Access derived from time alone (a grace period ending, once the invoices capability adds one)
changes no row: whoever adds it must also recompute the documents it ages (`outbox.mark`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, null, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import KeyedColumnElement

from collab_billing.db.models import (
    BillingCustomer,
    BillingEntitlement,
    BillingPrice,
    BillingProduct,
    BillingState,
    BillingSubscription,
    User,
)

Document = dict[str, Any]

_subscriptions = BillingSubscription.__table__
# Columns that other capabilities add to `billing_subscriptions` (plans: quantity, trial end):
# read when they exist, so that the document grows with the schema.
_OPTIONAL_COLUMNS = {
    "quantity": ("quantity", "stripe_quantity"),
    "trial_end": ("trial_end", "stripe_trial_end"),
}
# A subscription in one of these statuses is over: it is no one's plan any more.
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Which subscription is the plan when a user has several: the one granting the most access.
_STATUS_RANK = {"active": 3, "trialing": 3, "past_due": 2}
FEATURELESS_ACCESS = frozenset({"blocked", "none"})


def _optional_column(names: Sequence[str]) -> KeyedColumnElement[Any] | None:
    for name in names:
        if name in _subscriptions.c:
            return _subscriptions.c[name]
    return None


@dataclass(frozen=True)
class SubscriptionFacts:
    """What the document reads of one subscription (with its price's catalog names)."""

    billing_customer_id: int
    id: int
    stripe_subscription_id: str
    status: str
    stripe_price_id: str | None
    lookup_key: str | None
    product_name: str | None
    cancel_at_period_end: bool
    current_period_end: datetime | None
    quantity: int | None
    trial_end: datetime | None


def derive_access(subscriptions: Sequence[SubscriptionFacts]) -> dict[str, Any]:
    """`{"state", "until"}` from the subscriptions' statuses: active or trialing -> `active`,
    past_due -> `grace`, anything else (or nothing) -> `none`. The one place to swap for the
    invoices capability's `billing.access` (which adds `blocked` and the grace's end)."""
    best = max((_STATUS_RANK.get(s.status, 0) for s in subscriptions), default=0)
    state = {3: "active", 2: "grace"}.get(best, "none")
    return {"state": state, "until": None}


def iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC (SQLite hands back naive datetimes, all UTC)."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def build_document(
    github_user_id: int, subscriptions: Sequence[SubscriptionFacts], features: Collection[str]
) -> Document:
    """The document (without `version`): plain JSON values, so that it compares equal to
    itself after a round trip through the database."""
    access = derive_access(subscriptions)
    live = [s for s in subscriptions if s.status not in ENDED_STATUSES]
    plan = max(live, key=lambda s: (_STATUS_RANK.get(s.status, 0), s.id), default=None)
    return {
        "github_user_id": github_user_id,
        "access": access,
        "plan": None
        if plan is None
        else {
            "stripe_subscription_id": plan.stripe_subscription_id,
            "status": plan.status,
            "stripe_price_id": plan.stripe_price_id,
            "lookup_key": plan.lookup_key,
            "product_name": plan.product_name,
            "cancel_at_period_end": plan.cancel_at_period_end,
            "current_period_end": iso(plan.current_period_end),
        },
        "quantity": plan.quantity if plan else None,
        "trial_end": iso(plan.trial_end) if plan else None,
        "features": [] if access["state"] in FEATURELESS_ACCESS else sorted(set(features)),
        # The spend cap and this period's usage, once the usage capability lands.
        "usage": None,
    }


def documents(session: Session, user_ids: Collection[int]) -> dict[int, Document]:
    """The current documents of these users (those that exist), in three statements."""
    if not user_ids:
        return {}
    owners = session.execute(
        select(User.id, User.github_user_id, BillingCustomer.id)
        .outerjoin(BillingCustomer, BillingCustomer.user_id == User.id)
        .where(User.id.in_(user_ids))
    ).all()
    customer_ids = [cid for _, _, cid in owners if cid is not None]
    subscriptions = _subscriptions_of(session, customer_ids)
    features = _features_of(session, customer_ids)
    return {
        user_id: build_document(
            github_user_id,
            subscriptions.get(customer_id, []) if customer_id is not None else [],
            features.get(customer_id, []) if customer_id is not None else [],
        )
        for user_id, github_user_id, customer_id in owners
    }


def _subscriptions_of(
    session: Session, customer_ids: Sequence[int]
) -> dict[int, list[SubscriptionFacts]]:
    if not customer_ids:
        return {}
    quantity = _optional_column(_OPTIONAL_COLUMNS["quantity"])
    trial_end = _optional_column(_OPTIONAL_COLUMNS["trial_end"])
    s = _subscriptions.c
    statement = (
        select(
            s.billing_customer_id,
            s.id,
            s.stripe_subscription_id,
            s.stripe_subscription_status,
            s.stripe_price_id,
            BillingPrice.lookup_key,
            BillingProduct.name,
            s.stripe_cancel_at_period_end,
            s.stripe_current_period_end,
            quantity if quantity is not None else null(),
            trial_end if trial_end is not None else null(),
        )
        .outerjoin(BillingPrice, BillingPrice.stripe_price_id == s.stripe_price_id)
        .outerjoin(
            BillingProduct, BillingProduct.stripe_product_id == BillingPrice.stripe_product_id
        )
        .where(s.billing_customer_id.in_(customer_ids))
    )
    grouped: dict[int, list[SubscriptionFacts]] = {}
    for row in session.execute(statement):
        grouped.setdefault(row[0], []).append(SubscriptionFacts(*row))
    return grouped


def _features_of(session: Session, customer_ids: Sequence[int]) -> dict[int, list[str]]:
    if not customer_ids:
        return {}
    rows = session.execute(
        select(BillingEntitlement.billing_customer_id, BillingEntitlement.lookup_key).where(
            BillingEntitlement.billing_customer_id.in_(customer_ids)
        )
    )
    grouped: dict[int, list[str]] = {}
    for customer_id, lookup_key in rows:
        grouped.setdefault(customer_id, []).append(lookup_key)
    return grouped


_users, _states = User.__table__, BillingState.__table__
# The hot read, built once (a Core statement: half the cost of building an ORM one per call).
STORED_STATE = (
    select(_users.c.id, _states.c.version, _states.c.document)
    .select_from(_users)
    .outerjoin(_states, _states.c.user_id == _users.c.id)
    .where(_users.c.github_user_id == bindparam("github_user_id"))
)


def current_state(session: Session, github_user_id: int) -> Document | None:
    """The user's document with its `version`; None: no such user. One indexed statement: the
    document stored by the outbox with the change that made it (so it is exactly what was last
    notified). A user whose rows never changed since the outbox existed has none stored: the
    document is computed from the rows, with version 0."""
    found = session.execute(STORED_STATE, {"github_user_id": github_user_id}).first()
    if found is None:
        return None
    user_id, version, document = found
    if document is None:
        document = documents(session, [user_id])[user_id]
    return {**document, "version": version or 0}
