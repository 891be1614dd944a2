"""The state document of a user: everything the host app needs to know in one read.

`GET /billing/state` renders it and every `billing.state.updated` notification carries it.
It is computed from mirrored rows only (never from Stripe), for many users in a few
statements, so that the outbox (`state.outbox`) can recompute it inside the transaction that
changed the rows. Its `version` is stored beside the last document (`billing_states`) and grows
by one each time the document changes.

- `access`: `state.access.decide_access` (subscriptions and open invoices), judged at the
  session's clock (`state.access.AccessRules`).
- `plan`, `quantity`, `trial_end`: the subscription that grants the most access, its price as
  the mirrored catalog names it (like `GET /billing/subscriptions`' `plan`).
- `features`: the entitlements' lookup keys, less those that only subscriptions granting no
  access give (`state.features`); none while access is `blocked` or `none`.
- `usage`: the spend cap and whether this period's estimated cost is past it, not the running
  totals: those change with every usage record, and each change would be a new version and a
  notification. `GET /billing/usage` answers the totals.

Time alone changes the document when a subscription's grace ends (the user's access goes
`grace` -> `blocked`; or, beside a subscription that keeps it `active`, the features only the
one whose grace ended gives are taken off) without changing a row, so a stored document could
go stale. Stored beside it is the earliest grace end of the user's subscriptions
(`billing_states.grace_ends_at`, `Computed.grace_ends_at`), whatever the access. Once it has
passed: a stored `grace` whose own `until` has passed is served as `blocked` (`served_at`: on
read, without a write); any other stored document is recomputed before it is served, like a
stale one (`StaleDocument`); and the notification sender's leader loop recomputes the
documents found by that column (`outbox.recompute_ended_graces`), which stores and notifies
the new version. Other time-only changes are picked up by the next change of the user's rows
or usage: an invoice whose due date passes with no failed payment, and the calendar month's
rollover of a capped user without a subscription.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from collab_billing.db import invoice_queries, queries
from collab_billing.db.dialect import in_ids
from collab_billing.db.models import (
    BillingCustomer,
    BillingEntitlement,
    BillingInvoice,
    BillingPreference,
    BillingState,
    User,
)
from collab_billing.state import features as granted
from collab_billing.state import spend
from collab_billing.state.access import (
    AccessRules,
    decide_access,
    first_grace_end,
    rules_of,
    utc,
)

Document = dict[str, Any]

# A subscription in one of these statuses is over: it is no one's plan any more.
ENDED_STATUSES = frozenset({"canceled", "incomplete_expired"})
# Which subscription is the plan when a user has several: the one granting the most access.
_STATUS_RANK = {"active": 3, "trialing": 3, "past_due": 2}
FEATURELESS_ACCESS = frozenset({"blocked", "none"})
BLOCKED = {"state": "blocked", "until": None}


# The stored documents' format: raise it when the document's fields, or the rules that compute
# it, change. A release whose format differs from the one the documents were stored in
# recomputes them all (at its first poll), and notifies those that changed: else the stored
# ones were served, and notified, as an older release computed them (a field missing, an access
# decided by older rules) until the user's rows next changed.
# 2: of several graces, the one that ends last; 3: usage priced from its item's addition,
# and per package (`transform_quantity`); 4: an invoice written off uncollectible before any
# charge (a period `pause_collection` gives free) is no debt; 5: the grace of an invoice sent
# to be paid (`send_invoice`) runs from its due date, not its finalization; 6: usage priced
# less the subscription's discounts (`over_spend_cap`); 7: less the customer's discount, for a
# subscription without one of its own; 8: no feature that only a subscription granting no
# access (past due beyond its grace) gives, beside one that grants access (and
# `billing_states.grace_ends_at` is any subscription's grace end, not only the access's).
DOCUMENT_FORMAT = 8


def iso(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 UTC (SQLite hands back naive datetimes, all UTC)."""
    if value is None:
        return None
    return utc(value).isoformat().replace("+00:00", "Z")


def _plan(subscription: queries.SubscriptionRow) -> Document:
    return {
        "stripe_subscription_id": subscription.stripe_subscription_id,
        "status": subscription.stripe_subscription_status,
        "stripe_price_id": subscription.stripe_price_id,
        "lookup_key": subscription.price_lookup_key,
        "product_name": subscription.product_name,
        "unit_amount": subscription.unit_amount,
        "currency": subscription.currency,
        "interval": subscription.interval,
        "interval_count": subscription.interval_count,
        "cancel_at_period_end": subscription.stripe_cancel_at_period_end,
        "cancel_at": iso(subscription.stripe_cancel_at),
        "current_period_end": iso(subscription.stripe_current_period_end),
    }


def build_document(
    github_user_id: int,
    subscriptions: Sequence[queries.SubscriptionRow],
    open_invoices: Sequence[BillingInvoice],
    features: Collection[str],
    usage: Document,
    rules: AccessRules,
) -> Document:
    """The document (without `version`): plain JSON values, so that it compares equal to
    itself after a round trip through the database. `subscriptions`: oldest first."""
    access = decide_access(subscriptions, open_invoices, rules.clock(), rules.grace)
    live = [s for s in subscriptions if s.stripe_subscription_status not in ENDED_STATUSES]
    # The best status; among equals the newest (`subscriptions` come oldest first).
    ranked = [(_STATUS_RANK.get(s.stripe_subscription_status, 0), i) for i, s in enumerate(live)]
    plan = live[max(ranked)[1]] if ranked else None
    return {
        "github_user_id": github_user_id,
        "access": {"state": access.state, "until": iso(access.until)},
        "plan": None if plan is None else _plan(plan),
        "quantity": plan.quantity if plan else None,
        "trial_end": iso(plan.stripe_trial_end) if plan else None,
        "features": [] if access.state in FEATURELESS_ACCESS else sorted(set(features)),
        "usage": usage,
    }


# Built once (`db/queries.py` says why).
_OWNERS = (
    select(User.id, User.github_user_id, BillingCustomer.id)
    .outerjoin(BillingCustomer, BillingCustomer.user_id == User.id)
    .where(in_ids(User.id))
)
_CAPS = select(BillingPreference.user_id, BillingPreference.max_monthly_spend_cents).where(
    in_ids(BillingPreference.user_id), BillingPreference.max_monthly_spend_cents.is_not(None)
)
_FEATURES = select(
    BillingEntitlement.billing_customer_id,
    BillingEntitlement.stripe_feature_id,
    BillingEntitlement.lookup_key,
).where(in_ids(BillingEntitlement.billing_customer_id))


class Computed(NamedTuple):
    """A user's document, and when time alone may change it: the earliest end of a grace of
    the user's subscriptions (None: none in grace). Stored as `billing_states.grace_ends_at`:
    the document is recomputed once it has passed (the module's docstring)."""

    document: Document
    grace_ends_at: datetime | None


def documents(session: Session, user_ids: Collection[int]) -> dict[int, Document]:
    """The current documents of these users (those that exist): `computed`'s."""
    return {user_id: found.document for user_id, found in computed(session, user_ids).items()}


def computed(session: Session, user_ids: Collection[int]) -> dict[int, Computed]:
    """The current documents of these users (those that exist), judged by the session's
    access rules, with their grace ends: a few statements for any number of users, plus the
    spend of those with a cap (`state.spend`)."""
    if not user_ids:
        return {}
    rules = rules_of(session)
    now = rules.clock()
    owners = session.execute(_OWNERS, {"ids": list(user_ids)}).all()
    customer_ids = [cid for _, _, cid in owners if cid is not None]
    subscriptions = queries.customers_subscriptions(session, customer_ids)
    invoices = invoice_queries.customers_open_invoices(session, customer_ids)
    features = _features_of(session, customer_ids, subscriptions, invoices, rules)
    usages = usage_of(session, [user_id for user_id, _, _ in owners], now)
    found: dict[int, Computed] = {}
    for user_id, github_user_id, customer_id in owners:
        subscribed = subscriptions.get(customer_id or 0, [])
        owed = invoices.get(customer_id or 0, [])
        document = build_document(
            github_user_id,
            subscribed,
            owed,
            features.get(customer_id or 0, []),
            usages[user_id],
            rules,
        )
        found[user_id] = Computed(document, first_grace_end(subscribed, owed, now, rules.grace))
    return found


def usage_of(session: Session, user_ids: Sequence[int], now: datetime) -> dict[int, Document]:
    """`{"max_monthly_spend_cents", "over_spend_cap"}` per user: only users with a cap are
    priced (a user without one is never over it)."""
    caps = dict(session.execute(_CAPS, {"ids": list(user_ids)}).all())
    return {
        user_id: {
            "max_monthly_spend_cents": caps.get(user_id),
            "over_spend_cap": user_id in caps
            and spend.user_spend(session, user_id, now).over_spend_cap,
        }
        for user_id in user_ids
    }


def _features_of(
    session: Session,
    customer_ids: Sequence[int],
    subscriptions: dict[int, list[queries.SubscriptionRow]],
    invoices: dict[int, list[BillingInvoice]],
    rules: AccessRules,
) -> dict[int, list[str]]:
    """Each customer's lookup keys to serve: its entitlements, less those only its
    subscriptions that grant no access give (`state.features`)."""
    if not customer_ids:
        return {}
    grouped: dict[int, list[granted.Entitlement]] = {}
    for customer_id, feature, lookup_key in session.execute(_FEATURES, {"ids": customer_ids}):
        grouped.setdefault(customer_id, []).append((feature, lookup_key))
    now = rules.clock()
    mixed = {
        cid: both
        for cid in grouped
        if (
            both := granted.split(
                subscriptions.get(cid, []), invoices.get(cid, []), now, rules.grace
            )
        )
    }
    return granted.served(session, grouped, mixed)


def grace_end(document: Document) -> datetime | None:
    """When the document's own grace ends; None: not in grace, or its end is not known."""
    access = document["access"]
    if access["state"] != "grace" or access["until"] is None:
        return None
    return datetime.fromisoformat(access["until"])


_users, _states = User.__table__, BillingState.__table__
# The hot read, built once (a Core statement: half the cost of building an ORM one per call).
STORED_STATE = (
    select(
        _users.c.id, _states.c.version, _states.c.document, _states.c.grace_ends_at, _states.c.stale
    )
    .select_from(_users)
    .outerjoin(_states, _states.c.user_id == _users.c.id)
    .where(_users.c.github_user_id == bindparam("github_user_id"))
)


class StaleDocument(Exception):
    """The user's stored document must be recomputed, in a write transaction, before it is
    served: a catch-up marked it stale (`state.outbox`), or a grace of one of the user's
    subscriptions has ended since it was computed (`served_at`)."""

    def __init__(self, user_id: int) -> None:
        super().__init__(f"the state document of user {user_id} is stale")
        self.user_id = user_id


def served_at(
    user_id: int, document: Document, grace_ends_at: datetime | None, now: datetime
) -> Document:
    """The stored document as it stands at `now`. Until `grace_ends_at` (`Computed`), as
    stored. After it: a `grace` whose own end has passed is `blocked` (and featureless) even
    before the sweep has written that version, without a write; any other document (access
    kept `active` or in grace by another subscription, whose features may differ now) raises
    `StaleDocument`."""
    if grace_ends_at is None or utc(grace_ends_at) > now:
        return document
    ended = grace_end(document)
    if ended is not None and ended <= now:
        return {**document, "access": BLOCKED, "features": []}
    raise StaleDocument(user_id)


def current_state(
    session: Session, github_user_id: int, now: datetime, recomputed: bool = False
) -> Document | None:
    """The user's document with its `version`, as it stands at `now`; None: no such user. One
    indexed statement: the document stored by the outbox with the change that made it (so it
    is what was last notified, but for a grace ended since: see `served_at`). A user whose
    rows never changed since the outbox existed has none stored: the document is computed
    from the rows, with version 0. Raises `StaleDocument` when the stored one is stale or
    a grace has ended since (`served_at`), unless `recomputed`: this transaction has just
    recomputed it (`outbox.write_changed_documents`), and it is served as stored."""
    found = session.execute(STORED_STATE, {"github_user_id": github_user_id}).first()
    if found is None:
        return None
    user_id, version, document, grace_ends_at, stale = found
    if stale and not recomputed:
        raise StaleDocument(user_id)
    if document is None:
        document = documents(session, [user_id])[user_id]
    elif not recomputed:
        document = served_at(user_id, document, grace_ends_at, now)
    return {**document, "version": version or 0}
