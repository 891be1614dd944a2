"""Sync on return from Checkout: read the user's subscriptions from Stripe now and apply them.

A user back from Checkout expects the product to know at once that they paid, not within a
poll interval. `sync_subscriptions` reads the Checkout session (when given) and the
customer's subscriptions, with their discounts (and coupons: a promotion code entered at
Checkout counts in the usage estimate at once), and active entitlements (the features its plan
gives, so that the state document changes once, with all), with no transaction open, and
writes them through
the applier as resync does: each row takes the objects read, watermarked with Stripe's newest
event second read *before* them, so older events are found stale and newer ones still apply
(a row of that second only if no event was applied to it since the reads began: one may have
been created after them, in that second). A subscription's discount whose row is live but that
the read no longer shows was removed in Stripe: it is marked deleted by the same rule, in the
same transaction (`_unshown_discounts`).
Four reads at most, in two round trips (the session and the newest event at once, then the
subscriptions and the entitlements), all counted in the read budget; a customer linked by the
sync (made before its user existed) is read whole, its invoices too, as the poll reads one
(and left to the poll's adoption if an event of its objects was skipped meanwhile:
`Applier.apply_read`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.access import find_user
from collab_billing.billing.errors import NotFound
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingCustomer, User
from collab_billing.mirror import customers, discounts
from collab_billing.mirror.discounts import DISCOUNTS
from collab_billing.mirror.entitlements import ENTITLEMENTS
from collab_billing.mirror.registry import MIRRORED_TYPES, MirroredType, relevant_types_filter
from collab_billing.mirror.subscriptions import SUBSCRIPTIONS
from collab_billing.reconcile import budget
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.reads import owned_or_deleted
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.client import CheckoutSessionSummary
from collab_billing.stripe_gateway.events import id_of


@dataclass(frozen=True)
class SyncTarget:
    """Whose subscriptions to read: the user and their Stripe customer (None: never had one)."""

    github_user_id: int
    stripe_customer_id: str | None
    link: customers.Candidate | None = None  # a customer to link to the user first


def sync_subscriptions(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int | None,
    checkout_session_id: str | None,
) -> int:
    """Read the user's subscriptions from Stripe and apply them; returns the user's GitHub id.

    With a Checkout session, the session must be the user's (its customer is theirs): else
    `NotFound`, as for a session Stripe does not know. Without a user, the session names it."""
    try:
        return _sync(factory, gateway, github_user_id, checkout_session_id)
    finally:
        # An API-only process (reconciler off) records its reads too; a failure does not
        # fail the sync, whose rows are written.
        budget.flush_reads_or_log(factory, time.time())


def _sync(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int | None,
    checkout_session_id: str | None,
) -> int:
    # An unknown user is a 404 that reads nothing from Stripe (`_target` finds the user).
    if checkout_session_id is None:
        assert github_user_id is not None
        target = _target(factory, github_user_id, None)
        if target.stripe_customer_id is None:
            return target.github_user_id
        as_of = gateway.newest_event_created(relevant_types_filter())
    else:
        if github_user_id is not None:
            find_user(factory, github_user_id)
        with ThreadPoolExecutor(2) as pool:  # two round trips to Stripe, not three
            newest = pool.submit(gateway.newest_event_created, relevant_types_filter())
            session = _checkout_session(gateway, checkout_session_id)
            target = _target(factory, github_user_id, session)
            if target.stripe_customer_id is None:
                return target.github_user_id
            as_of = newest.result()
    customer = target.stripe_customer_id
    assert customer is not None
    applier = Applier(factory, gateway, source="sync")
    seen = applier.rows_of_customer(customer)  # before the reads (`write_read`)
    if target.link:
        read, link = _everything_owned(gateway, target.link)
    else:
        read, link = _plan(gateway, customer), None
    if as_of is not None:  # an account with no event has nothing to mirror yet
        links = [link] if link else []
        # A customer linked now has no rows of discounts to find gone.
        gone = [] if target.link else _unshown_discounts(factory, customer, read, as_of)
        applier.apply_read(read, as_of, links, seen, gone)
    return target.github_user_id


def _plan(gateway: StripeGateway, customer: str) -> list[tuple[MirroredType[Any], list[Any]]]:
    """The customer's subscriptions with their discounts, and their features (read together:
    the features come with the access they go with). The subscriptions are listed with their
    discounts expanded, each with its coupon, as resync lists discounts (`LISTED_WITH`): a
    promotion code entered at Checkout is taken off the usage estimate at once, at no read
    more (its coupon, if no row has it yet, written from the expansion)."""
    with ThreadPoolExecutor(2) as pool:
        listed = pool.submit(gateway.list_customer_subscriptions, customer, discounts.LISTED_WITH)
        entitlements = pool.submit(_active_entitlements, gateway, customer)
        raws = listed.result()
        subscriptions = [SUBSCRIPTIONS.decode(raw) for raw in raws]
        shown = [discount for raw in raws for discount in discounts.listed(raw)]
        return [
            (SUBSCRIPTIONS, subscriptions),
            (DISCOUNTS, shown),
            (ENTITLEMENTS, [entitlements.result()]),
        ]


def _unshown_discounts(
    factory: sessionmaker[Session],
    customer: str,
    read: list[tuple[MirroredType[Any], list[Any]]],
    as_of: int,
) -> list[tuple[MirroredType[Any], list[str]]]:
    """The discounts of the subscriptions read (`_plan`: listed with their discounts, after
    second `as_of`) whose rows are live but that the read no longer shows: removed in
    Stripe, their `customer.discount.deleted` not polled yet. Marked deleted with the read
    (`Applier.apply_read`, under the rules of a read's write), so the estimate stops taking
    them off at once, as resync does (`listed_rows`)."""
    objects = {mirrored.kind: found for mirrored, found in read}
    subscriptions = {SUBSCRIPTIONS.object_id(sub) for sub in objects[SUBSCRIPTIONS.kind]}
    shown = {DISCOUNTS.object_id(discount) for discount in objects[DISCOUNTS.kind]}
    with read_only(factory) as session:
        our_id = customers.known(session, [customer]).get(customer)
        if our_id is None:
            return []
        gone = discounts.unshown(session, our_id, subscriptions, shown, as_of)
    return [(DISCOUNTS, gone)] if gone else []


def _everything_owned(
    gateway: StripeGateway, link: customers.Candidate
) -> tuple[list[tuple[MirroredType[Any], list[Any]]], customers.Candidate]:
    """Every object of a customer linked now, as the poll reads one it links late: its
    events (its invoices', say) were skipped while it was not ours. A customer the read shows
    deleted (its deletion not applied yet) has none, and is linked as deleted: remembered so."""
    owned = owned_or_deleted(gateway, link[0])
    if isinstance(owned, customers.Customer):
        return [], (link[0], link[1], True)
    return [(mirrored, owned[mirrored.kind]) for mirrored in MIRRORED_TYPES if mirrored.owner], link


def _active_entitlements(gateway: StripeGateway, customer_id: str) -> Any:
    assert ENTITLEMENTS.fetch is not None
    return ENTITLEMENTS.fetch(gateway, customer_id)


def _checkout_session(gateway: StripeGateway, session_id: str) -> CheckoutSessionSummary:
    try:
        return gateway.retrieve_checkout_session(session_id)
    except StripeGatewayError as error:
        if error.http_status == 404:
            raise NotFound(f"no Checkout session {session_id} on Stripe") from None
        raise


def _target(
    factory: sessionmaker[Session],
    github_user_id: int | None,
    session: CheckoutSessionSummary | None,
) -> SyncTarget:
    if session is None:
        assert github_user_id is not None
        user = find_user(factory, github_user_id)
        linked = _customer_of(factory, user.id)
        unlinked = _customer_naming(factory, github_user_id) if linked is None else None
        if unlinked is not None:
            # Made in Stripe before the user existed: linked now, as the next poll would.
            return SyncTarget(github_user_id, unlinked, (unlinked, github_user_id, False))
        return SyncTarget(github_user_id, linked)
    customer_id = id_of(session.customer) if session.customer else None
    owner = _owner_of(factory, customer_id) if customer_id else None
    named = _named_user(session)
    if owner is None and named is not None and customer_id is not None:
        # A customer we have not linked yet (made by Checkout itself): the session names its
        # user, as the `checkout.session.completed` event would.
        user = find_user(factory, named)
        if _customer_of(factory, user.id) is None:
            owner, link = named, (customer_id, named, False)
            if github_user_id in (None, owner):
                return SyncTarget(owner, customer_id, link)
    if owner is None or github_user_id not in (None, owner):
        who = f"user {github_user_id}'s" if github_user_id is not None else "a known user's"
        raise NotFound(f"Checkout session {session.id} is not {who}")
    return SyncTarget(owner, customer_id)


def _customer_of(factory: sessionmaker[Session], user_id: int) -> str | None:
    """The user's live Stripe customer."""
    with read_only(factory) as session:
        return session.scalar(
            select(BillingCustomer.stripe_customer_id).where(
                BillingCustomer.user_id == user_id, BillingCustomer.stripe_deleted_at.is_(None)
            )
        )


def _customer_naming(factory: sessionmaker[Session], github_user_id: int) -> str | None:
    with read_only(factory) as session:
        return customers.unmatched_naming(session, github_user_id)


def link_named_customer(factory: sessionmaker[Session], gateway: StripeGateway, user: User) -> None:
    """A user without a Stripe customer, named by one that Stripe showed before the user
    existed: that customer is linked now, with its subscriptions, as the next poll would
    (`Applier.adopt`). A Checkout first made the user a second customer, and the first one's
    subscription, never linked, billed on unseen beside the one the user could then pay."""
    if named_but_unlinked(factory, user.id, user.github_user_id):
        sync_subscriptions(factory, gateway, user.github_user_id, None)


def named_but_unlinked(factory: sessionmaker[Session], user_id: int, github_user_id: int) -> bool:
    """Whether the user has no Stripe customer but one that Stripe showed names them."""
    if _customer_of(factory, user_id) is not None:
        return False
    return _customer_naming(factory, github_user_id) is not None


def _owner_of(factory: sessionmaker[Session], stripe_customer_id: str) -> int | None:
    """The GitHub id of the user linked to this Stripe customer."""
    with read_only(factory) as session:
        return session.scalar(
            select(User.github_user_id)
            .join(BillingCustomer, BillingCustomer.user_id == User.id)
            .where(BillingCustomer.stripe_customer_id == stripe_customer_id)
        )


def _named_user(session: CheckoutSessionSummary) -> int | None:
    for value in ((session.metadata or {}).get("github_user_id"), session.client_reference_id):
        if value and value.isdigit() and 0 < int(value) <= customers.MAX_GITHUB_USER_ID:
            return int(value)
    return None
