"""Rebuild customers and subscriptions from Stripe's list endpoints.

Used when events cannot be trusted (never synced, or the last poll is older than Stripe's
30-day event retention) and on demand (`collab-billing resync`). Lists are read with
`starting_after` pagination through the gateway, which throttles and honours 429s.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db import ledger, mirror, queries
from collab_billing.db.models import BillingCustomer
from collab_billing.reconcile.apply import _lock_objects as lock_objects
from collab_billing.reconcile.events import RELEVANT_TYPES, github_user_id_of
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_objects import ObjectFields

log = logging.getLogger(__name__)

WRITE_CHUNK = 500


@dataclass
class ResyncReport:
    customers_seen: int = 0
    customers_linked: int = 0
    customers_deleted: int = 0
    subscriptions_seen: int = 0
    subscriptions_written: int = 0
    as_of: int = 0


ProgressCallback = Callable[[str, int], None]


def resync(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int | None = None,
    progress: ProgressCallback | None = None,
) -> ResyncReport:
    report = ResyncReport()
    # Everything read from now on is at least as new as the newest event of this moment:
    # that second becomes the watermark of what we write and the cursor to poll from.
    report.as_of = _newest_event_created(gateway)
    customers = _customers(factory, gateway, github_user_id)
    listed: set[str] = set()
    for chunk in _chunked(customers, WRITE_CHUNK):
        report.customers_seen += len(chunk)
        listed.update(c["id"] for c in chunk if not c.get("deleted"))
        with factory() as session, session.begin():
            report.customers_linked += _link(session, chunk)
            report.customers_deleted += _mark_deleted(session, chunk)
        _tick(progress, "customers", report.customers_seen)
    if github_user_id is None:
        report.customers_deleted += _tombstone_unlisted(factory, gateway, listed)
    for chunk in _chunked(_subscriptions(factory, gateway, github_user_id), WRITE_CHUNK):
        report.subscriptions_seen += len(chunk)
        with factory() as session, session.begin():
            report.subscriptions_written += _write_subscriptions(session, chunk, report.as_of)
        _tick(progress, "subscriptions", report.subscriptions_seen)
    if github_user_id is None:
        with factory() as session, session.begin():
            ledger.write_state(session, ledger.CURSOR, report.as_of)
            ledger.write_state(session, ledger.LAST_DRAIN_AT, int(time.time()))
            ledger.write_state(session, ledger.LAST_RESYNC_AT, int(time.time()))
    return report


def _newest_event_created(gateway: StripeGateway) -> int:
    page = gateway.list_events(types=RELEVANT_TYPES, limit=1)
    return page.events[0].created if page.events else 0


def _customers(
    factory: sessionmaker[Session], gateway: StripeGateway, github_user_id: int | None
) -> Iterator[dict[str, Any]]:
    for customer in gateway.iterate_list("/v1/customers", {}):
        if github_user_id is None or _named_user(customer) == github_user_id:
            yield customer
    if github_user_id is not None:
        # Also the customer we linked ourselves, whatever its metadata says now.
        with factory() as session, session.begin():
            user = queries.get_user_by_github_user_id(session, github_user_id)
            linked = queries.get_billing_customer_by_user_id(session, user.id) if user else None
        if linked is not None:
            yield gateway.retrieve_customer(linked.stripe_customer_id)


def _subscriptions(
    factory: sessionmaker[Session], gateway: StripeGateway, github_user_id: int | None
) -> Iterator[dict[str, Any]]:
    if github_user_id is None:
        yield from gateway.iterate_list("/v1/subscriptions", {"status": "all"})
        return
    with factory() as session, session.begin():
        user = queries.get_user_by_github_user_id(session, github_user_id)
        linked = queries.get_billing_customer_by_user_id(session, user.id) if user else None
    if linked is not None:
        yield from gateway.iterate_list(
            "/v1/subscriptions", {"status": "all", "customer": linked.stripe_customer_id}
        )


def _named_user(customer: dict[str, Any]) -> int | None:
    return github_user_id_of(ObjectFields.from_dict(customer))


def _link(session: Session, customers: list[dict[str, Any]]) -> int:
    known = mirror.customer_rows(session, [c["id"] for c in customers])
    linked = 0
    for customer in customers:
        if customer["id"] in known or customer.get("deleted"):
            continue
        github_user_id = _named_user(customer)
        user_id = mirror.user_id_for_github_id(session, github_user_id) if github_user_id else None
        if user_id is not None and mirror.link_customer_if_free(session, user_id, customer["id"]):
            linked += 1
    return linked


def _mark_deleted(session: Session, customers: list[dict[str, Any]]) -> int:
    """Known customers that Stripe now reports deleted become tombstones."""
    live = _live_customer_ids(session, [c["id"] for c in customers if c.get("deleted")])
    mirror.mark_customers_deleted(session, live)
    return len(live)


def _live_customer_ids(session: Session, stripe_customer_ids: list[str]) -> list[str]:
    live: list[str] = []
    for chunk in ledger.chunks(stripe_customer_ids):
        live.extend(
            session.scalars(
                select(BillingCustomer.stripe_customer_id).where(
                    BillingCustomer.stripe_customer_id.in_(chunk),
                    BillingCustomer.stripe_deleted_at.is_(None),
                )
            )
        )
    return live


def _tombstone_unlisted(
    factory: sessionmaker[Session], gateway: StripeGateway, listed: set[str]
) -> int:
    """Customers we hold as live but Stripe's list no longer shows were deleted while we were
    not reading events (the list omits deleted customers): confirm each, then tombstone it."""
    with factory() as session, session.begin():
        live = set(
            session.scalars(
                select(BillingCustomer.stripe_customer_id).where(
                    BillingCustomer.stripe_deleted_at.is_(None)
                )
            )
        )
    confirmed: list[dict[str, Any]] = []
    for customer_id in sorted(live - listed):
        try:
            confirmed.append(gateway.retrieve_customer(customer_id))
        except StripeGatewayError as error:
            if error.http_status != 404:
                raise
            log.warning("a linked customer is unknown to Stripe", extra={"error": str(error)})
    if not confirmed:
        return 0
    with factory() as session, session.begin():
        return _mark_deleted(session, confirmed)


def _write_subscriptions(session: Session, subscriptions: list[dict[str, Any]], as_of: int) -> int:
    states = [mirror.SubscriptionState.from_stripe(s, as_of) for s in subscriptions]
    # Take the appliers' per-object locks (PostgreSQL) before deciding against the rows: a webhook
    # committing a newer state between our read and our write would otherwise be overwritten.
    lock_objects(session, sorted({s.stripe_subscription_id for s in states}))
    known = mirror.customer_rows(session, [s.stripe_customer_id for s in states])
    # A row written by an event newer than our snapshot second is newer than what we read.
    ours = [s for s in states if s.stripe_customer_id in known]
    return len(mirror.upsert_newer(session, ours, known, same_second=True))


def _chunked(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _tick(progress: ProgressCallback | None, what: str, count: int) -> None:
    if progress is not None:
        progress(what, count)


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
