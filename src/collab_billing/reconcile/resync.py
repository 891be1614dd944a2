"""Rebuild customers and every mirrored type from Stripe's list endpoints.

Used when events cannot be trusted (never synced, or the last poll is older than Stripe's
30-day event retention) and on demand (`collab-billing resync`). Lists are read page by page
through the gateway (throttled, 429s retried), with no transaction open; each page is
written in its own short transaction.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.engine import read_only, transaction
from collab_billing.db.models import (
    BillingCustomer,
    BillingEntitlement,
    BillingProduct,
    BillingSubscription,
    User,
)
from collab_billing.mirror import customers, meters
from collab_billing.mirror.registry import (
    MIRROR_FORMAT,
    MIRRORED_TYPES,
    MirroredType,
    relevant_types_filter,
)
from collab_billing.reconcile import ledger, linking
from collab_billing.reconcile.batch import BatchWriter, row_marks
from collab_billing.reconcile.reads import NO_ROW, StripeReads
from collab_billing.state import outbox
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.events import decode_object

log = logging.getLogger(__name__)

PAGE = 100
# Subscriptions in these statuses may grant entitlements (Stripe keeps them until it ends).
LIVE_STATUSES = ("active", "trialing", "past_due", "paused", "unpaid", "incomplete")
ProgressCallback = Callable[[str, int], None]


@dataclass
class ResyncReport:
    customers_seen: int = 0
    customers_linked: int = 0
    as_of: int = 0
    # Per mirrored type's kind: objects listed, and rows written.
    seen: Counter[str] = field(default_factory=Counter)
    written: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)  # per-customer reads that failed
    # Rows tombstoned because a complete list no longer showed them (`listed_rows`).
    deleted: Counter[str] = field(default_factory=Counter)

    @property
    def subscriptions_written(self) -> int:
        return self.written["subscription"]


def resync(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int | None = None,
    progress: ProgressCallback | None = None,
    clock: Callable[[], float] = time.time,
) -> ResyncReport:
    """`clock`: the reconciler's (Stripe's time, as far as this machine knows it: under
    `dev`, the emulator's), by which the resync is stamped a complete poll."""
    tick: ProgressCallback = progress or (lambda _what, _count: None)
    started = int(clock())  # what it lists is at least as new as this
    report = ResyncReport(as_of=_stripe_now(gateway, clock))
    # Everything read from now on is at least as new as `as_of`: it becomes the watermark of
    # what we write and, for a full resync, the cursor to poll from.
    listed: set[str] = set()
    for chunk in _chunks(_customers(factory, gateway, github_user_id)):
        report.customers_seen += len(chunk)
        listed.update(customer.id for customer in chunk if not customer.deleted)
        with _deferring(factory) as session:
            report.customers_linked += _link(session, chunk)
        tick("customers", report.customers_seen)
    if github_user_id is None:
        _tombstone_unlisted(factory, gateway, listed)
    for mirrored in _catalog_first(MIRRORED_TYPES):
        seen = _versions_of_second(factory, mirrored, report.as_of)
        shown: set[str] = set()
        for chunk in _chunks(_objects(factory, gateway, mirrored, github_user_id, report)):
            report.seen[mirrored.kind] += len(chunk)
            shown.update(mirrored.object_id(obj) for obj in chunk)
            with _deferring(factory) as session:
                written = BatchWriter(session, StripeReads(None)).write_read(
                    mirrored, chunk, report.as_of, seen
                )
                report.written[mirrored.kind] += written
            tick(f"{mirrored.kind}s", report.seen[mirrored.kind])
        if mirrored.listed_rows is not None:
            report.deleted[mirrored.kind] += _tombstone_unshown(
                factory, mirrored, shown, report.as_of, github_user_id
            )
    outbox.refresh_every_stale(factory)
    if github_user_id is None:
        meters.sync_meters(factory, gateway)
        with transaction(factory) as session:
            ledger.advance_cursor(session, report.as_of)
            ledger.write_state(session, ledger.LAST_DRAIN_AT, started)
            ledger.write_state(session, ledger.LAST_RESYNC_AT, int(clock()))
            ledger.write_state(session, ledger.MIRROR_FORMAT, MIRROR_FORMAT)
    return report


def relist(factory: sessionmaker[Session], gateway: StripeGateway, kinds: Collection[str]) -> int:
    """List these mirrored kinds again from Stripe and write them as resync does, for the
    columns (or types) an older release did not keep; a `fetch` type is read per object as
    a full resync reads it (a failed read is logged and skipped). Returns the rows written."""
    as_of = _stripe_now(gateway)
    written = 0
    report = ResyncReport(as_of=as_of)
    for mirrored in _catalog_first(m for m in MIRRORED_TYPES if m.kind in kinds):
        seen = _versions_of_second(factory, mirrored, as_of)
        for chunk in _chunks(_objects(factory, gateway, mirrored, None, report)):
            with _deferring(factory) as session:
                written += BatchWriter(session, StripeReads(None)).write_read(
                    mirrored, chunk, as_of, seen
                )
    outbox.refresh_every_stale(factory)
    return written


def _catalog_first(types: Iterable[MirroredType[Any]]) -> list[MirroredType[Any]]:
    """A document recomputed while a resync runs (`GET /billing/state` reads a stale one so)
    names its plan's amount and product."""
    return sorted(types, key=lambda mirrored: mirrored.owner is not None)


def refresh(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    mirrored: MirroredType[Any],
    object_ids: Sequence[str],
) -> None:
    """Read these objects from Stripe now and write them as resync does, as of the newest
    event's second taken before the reads: for a change just made through the API, shown
    without waiting for its event (docs/reconciliation.md, "Adding a mirrored type", on
    `refresh`; the rule is "Reads")."""
    with read_only(factory) as session:
        marks = row_marks(session, mirrored, object_ids)
    seen = {
        object_id: marks[object_id][1] if object_id in marks else NO_ROW for object_id in object_ids
    }
    as_of = _stripe_now(gateway)
    chunk = [mirrored.retrieve(gateway, object_id) for object_id in object_ids]
    with transaction(factory) as session:
        BatchWriter(session, StripeReads(None)).write_read(mirrored, chunk, as_of, seen)


def _versions_of_second(
    factory: sessionmaker[Session], mirrored: MirroredType[Any], as_of: int
) -> dict[str, int]:
    """The versions of the rows of second `as_of`, read before the lists, so that such a row
    is rewritten from a list if nothing was written to it since (without them it would keep
    what it shows until its next event: docs/reconciliation.md, "Reads")."""
    table = mirrored.table
    statement = select(table.c[mirrored.key], table.c.stripe_state_version)
    with read_only(factory) as session:
        rows = session.execute(statement.where(table.c.stripe_state_as_of == as_of))
        return {object_id: version for object_id, version in rows}


@contextmanager
def _deferring(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction of the resync: the users its rows concern are marked stale and their
    documents recomputed once every type is written (`outbox.refresh_every_stale`), so each
    user is notified once, of where the resync leaves them (not of subscriptions before
    their features)."""
    with transaction(factory) as session:
        outbox.defer_documents(session)
        yield session


def _stripe_now(gateway: StripeGateway, clock: Callable[[], float] = time.time) -> int:
    """The newest event's second; with no event (a new account, or none in Stripe's 30 days),
    now (less a margin for a clock that runs ahead of Stripe's): polling starts there
    instead of at the epoch."""
    newest = gateway.newest_event_created(relevant_types_filter())
    return newest if newest is not None else int(clock()) - 300


def _customers(
    factory: sessionmaker[Session], gateway: StripeGateway, github_user_id: int | None
) -> Iterator[customers.Customer]:
    named = set()
    for raw in gateway.list_all("/v1/customers"):
        customer = decode_object(raw, customers.Customer)
        if github_user_id is None or customers.github_user_id_named(customer) == github_user_id:
            named.add(customer.id)
            yield customer
    linked = _linked_customer(factory, github_user_id) if github_user_id is not None else None
    if linked is not None and linked not in named:  # linked by us, whatever it names now
        yield customers.retrieve(gateway, linked)


def _objects(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    mirrored: MirroredType[Any],
    github_user_id: int | None,
    report: ResyncReport,
) -> Iterator[Any]:
    """The type's objects from its list endpoint (of the user's customer only, with
    `github_user_id`), or read one by one (`_fetched`)."""
    if mirrored.fetch is not None:
        yield from _fetched(factory, gateway, mirrored, github_user_id, report)
        return
    params = {}
    if github_user_id is not None:
        linked = _linked_customer(factory, github_user_id)
        if linked is None or mirrored.owner is None:
            return
        params["customer"] = linked
    yield from mirrored.list(gateway, **params)


def _fetched(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    mirrored: MirroredType[Any],
    github_user_id: int | None,
    report: ResyncReport,
) -> Iterator[Any]:
    """A type Stripe lists per customer (entitlements) or per product (product features)
    only: one read per customer of ours that may hold some (a live subscription, or rows
    already), or per live product (a full resync only). A failed read is logged and counted
    (`report.failed`); its rows stay as they were until its next event or resync."""
    assert mirrored.fetch is not None
    if mirrored.owner is not None:
        ids = _customers_to_fetch(factory, github_user_id)
    else:
        ids = _products_to_fetch(factory) if github_user_id is None else []
    for object_id in ids:
        try:
            yield mirrored.fetch(gateway, object_id)
        except StripeGatewayError as error:
            report.failed[mirrored.kind] += 1
            log.warning(
                "resync could not read an object's features",
                extra={"kind": mirrored.kind, "stripe_id": object_id, "error": str(error)},
            )


def _products_to_fetch(factory: sessionmaker[Session]) -> list[str]:
    """The products mirrored and not deleted (listed just before: `_catalog_first`)."""
    statement = select(BillingProduct.stripe_product_id).where(BillingProduct.deleted.is_(False))
    with read_only(factory) as session:
        return list(session.scalars(statement.order_by(BillingProduct.id)))


def _customers_to_fetch(factory: sessionmaker[Session], github_user_id: int | None) -> list[str]:
    """Our live customers with a live subscription or entitlement rows."""
    subscribed = select(BillingSubscription.id).where(
        BillingSubscription.billing_customer_id == BillingCustomer.id,
        BillingSubscription.stripe_subscription_status.in_(LIVE_STATUSES),
    )
    entitled = select(BillingEntitlement.id).where(
        BillingEntitlement.billing_customer_id == BillingCustomer.id
    )
    statement = select(BillingCustomer.stripe_customer_id).where(
        BillingCustomer.stripe_deleted_at.is_(None), subscribed.exists() | entitled.exists()
    )
    if github_user_id is not None:
        statement = statement.join(User, User.id == BillingCustomer.user_id).where(
            User.github_user_id == github_user_id
        )
    with read_only(factory) as session:
        return list(session.scalars(statement.order_by(BillingCustomer.id)))


def _linked_customer(factory: sessionmaker[Session], github_user_id: int) -> str | None:
    with read_only(factory) as session:
        return session.scalar(
            select(BillingCustomer.stripe_customer_id)
            .join(User, User.id == BillingCustomer.user_id)
            .where(User.github_user_id == github_user_id)
        )


def _tombstone_unlisted(
    factory: sessionmaker[Session], gateway: StripeGateway, listed: set[str]
) -> None:
    """Our live customers that Stripe's list no longer shows (it omits deleted ones) were
    deleted while we were not reading events: confirmed one by one, then tombstoned."""
    with read_only(factory) as session:
        live = set(
            session.scalars(
                select(BillingCustomer.stripe_customer_id).where(
                    BillingCustomer.stripe_deleted_at.is_(None)
                )
            )
        )
    deleted = [cid for cid in sorted(live - listed) if customers.retrieve(gateway, cid).deleted]
    with _deferring(factory) as session:
        customers.tombstone(session, deleted)


def _tombstone_unshown(
    factory: sessionmaker[Session],
    mirrored: MirroredType[Any],
    shown: set[str],
    as_of: int,
    github_user_id: int | None,
) -> int:
    """Mark deleted, as of `as_of` and where older than it, the live rows of a type whose
    lists show every live object (`listed_rows`: discounts) that the list just read (of the
    user's customer, for a one-user resync) did not show (docs/reconciliation.md, "Adding a
    mirrored type", on discounts). Returns how many."""
    linked = _linked_customer(factory, github_user_id) if github_user_id is not None else None
    if github_user_id is not None and (linked is None or mirrored.owner is None):
        return 0  # nothing of this type was listed
    with read_only(factory) as session:
        customer = customers.known(session, [linked])[linked] if linked is not None else None
        unshown = sorted(set(session.scalars(mirrored.unlisted(as_of, customer))) - shown)
    if not unshown:
        return 0
    with _deferring(factory) as session:
        ledger.lock_objects(session, unshown)
        rows = session.execute(mirrored.tombstone_unlisted(as_of), {"ids": unshown}).mappings()
        marked = [dict(row) for row in rows]
        if marked:
            outbox.mark_rows(session, mirrored.key, marked)
    return len(marked)


def _link(session: Session, chunk: list[customers.Customer]) -> int:
    known = customers.known(session, [c.id for c in chunk])
    customers.tombstone(session, [c.id for c in chunk if c.id in known and c.deleted])
    unknown = [c for c in chunk if c.id not in known]
    step = BatchWriter(session, StripeReads(None))
    return len(linking.link(step, [linking.candidate_of(customer) for customer in unknown]))


def _chunks(items: Iterator[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == PAGE:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def run_with_progress(
    factory: sessionmaker[Session], gateway: StripeGateway, github_user_id: int | None
) -> ResyncReport:
    """A progress bar on a terminal; one log line per chunk otherwise."""
    if not sys.stderr.isatty():
        return resync(
            factory,
            gateway,
            github_user_id,
            lambda what, n: log.info("resync progress", extra={"objects": what, "count": n}),
        )
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("resync", total=None)
        return resync(
            factory,
            gateway,
            github_user_id,
            lambda what, n: bar.update(task, description=f"resync: {n} {what}"),
        )
