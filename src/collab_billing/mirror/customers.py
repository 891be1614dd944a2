"""Customers, the root of the mirror: the link between a Stripe customer and one of our users.

What we keep of a customer is its link and its deletion. Linking is idempotent and deletion is
terminal on Stripe, so customer events commute and need no watermark, provided a deletion is
kept for a customer not ours too (`link_or_remember`: an older event never undoes it). A
customer is ours when we created it (`billing_customers`) or when its `metadata.github_user_id`
(or a completed Checkout's `client_reference_id`) names a user who has no live customer. One
that names nobody is remembered in `unmatched_stripe_customers`: its events, and its
subscriptions' events, are settled without asking Stripe about it, until a user with its
`github_user_id` appears.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import msgspec
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from collab_billing.db import queries
from collab_billing.db.dialect import execute_rows, in_ids, insert, insert_rows
from collab_billing.db.models import BillingCustomer, UnmatchedStripeCustomer, User
from collab_billing.state import outbox
from collab_billing.stripe_gateway import StripeGateway
from collab_billing.stripe_gateway.events import Event, Ref, decode_object, id_of

CUSTOMER_EVENT_TYPES = (
    "customer.created",
    "customer.updated",
    "customer.deleted",
    # A completed Checkout is news about its customer: who it belongs to.
    "checkout.session.completed",
)
MAX_GITHUB_USER_ID = 2**63 - 1


class Customer(msgspec.Struct):
    id: str
    metadata: dict[str, Any] | None = None
    deleted: bool = False


class CheckoutSession(msgspec.Struct):
    id: str
    customer: str | Ref | None = None
    client_reference_id: str | None = None
    metadata: dict[str, Any] | None = None


def retrieve(gateway: StripeGateway, customer_id: str) -> Customer:
    """The customer as Stripe shows it now (a deleted one: `deleted` set)."""
    body = gateway.get("customers.retrieve", f"/v1/customers/{customer_id}")
    return decode_object(body, Customer)


def customer_id_of(event: Event) -> str:
    """The customer an event of `CUSTOMER_EVENT_TYPES` is about."""
    if event.type == "checkout.session.completed":
        session = event.object_as(CheckoutSession)
        return id_of(session.customer) if session.customer else session.id
    return event.object_as(Customer).id


def github_user_id_named(event_or_customer: Event | Customer) -> int | None:
    """The user an event's object (or a customer read from Stripe) names, if any."""
    if isinstance(event_or_customer, Customer):
        return _github_user_id([(event_or_customer.metadata or {}).get("github_user_id")])
    if event_or_customer.type == "checkout.session.completed":
        session = event_or_customer.object_as(CheckoutSession)
        named = [(session.metadata or {}).get("github_user_id"), session.client_reference_id]
        return _github_user_id(named)
    return github_user_id_named(event_or_customer.object_as(Customer))


def _github_user_id(candidates: Iterable[object]) -> int | None:
    for value in candidates:
        if isinstance(value, str) and value.isdigit() and 0 < int(value) <= MAX_GITHUB_USER_ID:
            return int(value)
    return None


# -- rows -------------------------------------------------------------------------------------


def known(session: Session, stripe_customer_ids: Collection[str]) -> dict[str, int]:
    """Our customers among these, deleted ones included: Stripe id -> our id."""
    if not stripe_customer_ids:
        return {}
    rows = session.execute(_KNOWN, {"ids": list(stripe_customer_ids)})
    return {stripe_id: our_id for stripe_id, our_id in rows}


# Built once (`db/queries.py` says why).
_KNOWN = select(BillingCustomer.stripe_customer_id, BillingCustomer.id).where(
    in_ids(BillingCustomer.stripe_customer_id)
)


def unmatched(session: Session, stripe_customer_ids: Collection[str]) -> set[str]:
    if not stripe_customer_ids:
        return set()
    return set(
        session.scalars(
            select(UnmatchedStripeCustomer.stripe_customer_id).where(
                UnmatchedStripeCustomer.stripe_customer_id.in_(stripe_customer_ids)
            )
        )
    )


def unmatched_versions(session: Session, stripe_customer_ids: Collection[str]) -> dict[str, int]:
    """The version of each of these customers' unmatched row (none for those not unmatched)."""
    if not stripe_customer_ids:
        return {}
    table = UnmatchedStripeCustomer
    statement = select(table.stripe_customer_id, table.version)
    rows = session.execute(statement.where(table.stripe_customer_id.in_(stripe_customer_ids)))
    return {stripe_id: version for stripe_id, version in rows}


def skipped(session: Session, stripe_customer_ids: Collection[str]) -> None:
    """Events of these unmatched customers' objects were skipped: their versions are raised (a
    list of their objects read before this, written when one is linked, would not show them)."""
    if stripe_customer_ids:
        table = UnmatchedStripeCustomer
        session.execute(
            update(table)
            .where(table.stripe_customer_id.in_(sorted(stripe_customer_ids)))
            .values(version=table.version + 1)
        )


# (Stripe customer id, the GitHub user id it names or None, deleted on Stripe)
Candidate = tuple[str, int | None, bool]


def link_or_remember(session: Session, candidates: Sequence[Candidate]) -> dict[str, int]:
    """Link each live candidate to the user it names, if that user has no live customer (the
    first candidate naming a user wins; a user whose customer was deleted has their row moved
    to it); remember the others as unmatched. Returns Stripe id
    -> our id of those linked. A few statements for the lot, whatever their number.

    A candidate remembered deleted is deleted whatever its event shows: deletion is terminal
    on Stripe and an id is never reused, so an event showing it live (a `customer.created`
    too) is older than its deletion, delivered late. Its row stays deleted."""
    if not candidates:
        return {}
    candidates = _deletions_remembered(session, candidates)
    named = {gid for _, gid, deleted in candidates if gid is not None and not deleted}
    users = _users_without_live_customer(session, named)
    links: dict[str, int] = {}  # Stripe customer id -> user id
    for cid, gid, deleted in candidates:
        user = users.pop(gid, None) if gid is not None and not deleted else None
        if user is None:
            continue
        user_id, tombstone = user
        links[cid] = user_id
        if tombstone is not None:  # their customer was deleted: their row moves to this one
            queries.move_to_new_customer(session, tombstone, cid)
            outbox.mark(session, customers=[tombstone])
    linked: dict[str, int] = {}
    if links:
        rows = [{"user_id": uid, "stripe_customer_id": cid} for cid, uid in links.items()]
        statement = _link_statement(session.get_bind().dialect.name)
        execute_rows(session.connection(), statement, rows)
        linked = known(session, list(links))
        session.execute(
            delete(UnmatchedStripeCustomer).where(
                UnmatchedStripeCustomer.stripe_customer_id.in_(list(linked))
            )
        )
    _remember_unmatched(session, [c for c in candidates if c[0] not in linked])
    return linked


def _deletions_remembered(session: Session, candidates: Sequence[Candidate]) -> list[Candidate]:
    """`candidates`, those remembered deleted in `unmatched_stripe_customers` marked deleted."""
    gone = set(session.scalars(_REMEMBERED_DELETED, {"ids": [cid for cid, _, _ in candidates]}))
    return [(cid, gid, deleted or cid in gone) for cid, gid, deleted in candidates]


# Built once, like `_KNOWN`.
_REMEMBERED_DELETED = select(UnmatchedStripeCustomer.stripe_customer_id).where(
    in_ids(UnmatchedStripeCustomer.stripe_customer_id), UnmatchedStripeCustomer.deleted
)


@cache
def _link_statement(dialect: str) -> Any:
    columns = ("user_id", "stripe_customer_id")
    return insert_rows(dialect, BillingCustomer.__table__, columns).on_conflict_do_nothing()


def _users_without_live_customer(
    session: Session, github_user_ids: Collection[int]
) -> dict[int, tuple[int, int | None]]:
    """GitHub user id -> (our user id, their customer row if it is a tombstone), of those
    users who have no live customer."""
    if not github_user_ids:
        return {}
    rows = session.execute(
        select(User.github_user_id, User.id, BillingCustomer.id)
        .outerjoin(BillingCustomer, BillingCustomer.user_id == User.id)
        .where(
            User.github_user_id.in_(github_user_ids),
            BillingCustomer.id.is_(None) | BillingCustomer.stripe_deleted_at.is_not(None),
        )
    )
    return {github_user_id: (user_id, tombstone) for github_user_id, user_id, tombstone in rows}


def _remember_unmatched(session: Session, candidates: Sequence[Candidate]) -> None:
    if not candidates:
        return
    rows = [
        {"stripe_customer_id": cid, "github_user_id": gid, "deleted": deleted}
        for cid, gid, deleted in candidates
    ]
    statement = insert(session, UnmatchedStripeCustomer)
    # A later sighting that names nobody keeps the GitHub id an earlier one named.
    github_user_id = func.coalesce(
        statement.excluded.github_user_id, UnmatchedStripeCustomer.github_user_id
    )
    changed = {
        "deleted": statement.excluded.deleted,
        "github_user_id": github_user_id,
        "version": UnmatchedStripeCustomer.version + 1,
    }
    session.execute(
        statement.on_conflict_do_update(index_elements=["stripe_customer_id"], set_=changed),
        rows,
    )


def tombstone(session: Session, stripe_customer_ids: Collection[str]) -> None:
    """Deleted on Stripe: kept as a tombstone (the next checkout makes a new customer). Its
    user's document changes (its open invoices no longer count: no one can pay them)."""
    if not stripe_customer_ids:
        return
    live = (
        BillingCustomer.stripe_customer_id.in_(stripe_customer_ids),
        BillingCustomer.stripe_deleted_at.is_(None),
    )
    deleted = list(session.scalars(select(BillingCustomer.id).where(*live)))
    if deleted:
        session.execute(
            update(BillingCustomer)
            .where(BillingCustomer.id.in_(deleted))
            .values(stripe_deleted_at=datetime.now(UTC))
        )
        outbox.mark(session, customers=deleted)


def unmatched_naming(session: Session, github_user_id: int) -> str | None:
    """The live unmatched customer that names this GitHub user (the first seen), if any."""
    return session.scalar(
        select(UnmatchedStripeCustomer.stripe_customer_id)
        .where(
            UnmatchedStripeCustomer.github_user_id == github_user_id,
            ~UnmatchedStripeCustomer.deleted,
        )
        .order_by(UnmatchedStripeCustomer.seen_at)
        .limit(1)
    )


def adoptable(session: Session) -> dict[str, int]:
    """Unmatched live customers that name a user who exists now and has no live customer, with the
    versions of their rows (`unmatched_versions`)."""
    has_customer = (
        select(BillingCustomer.id)
        .where(BillingCustomer.user_id == User.id, BillingCustomer.stripe_deleted_at.is_(None))
        .exists()
    )
    table = UnmatchedStripeCustomer
    rows = session.execute(
        select(table.stripe_customer_id, table.version)
        .join(User, User.github_user_id == table.github_user_id)
        .where(~table.deleted, ~has_customer)
        .order_by(table.seen_at)
    )
    return {stripe_id: version for stripe_id, version in rows}
