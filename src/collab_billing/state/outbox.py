"""The notification outbox: a user's changed state document, written with the change.

Whatever writes rows that a state document reads marks what it changed on its session
(`mark`): the applier marks every mirrored row it writes (`mark_rows`: subscriptions, invoices,
entitlements, discounts, the catalog's prices, products and coupons), `PUT /billing/preferences`
the user whose cap changed, usage ingest the users whose `over_spend_cap` flipped, and the
notification sender's sweep the users of whose subscriptions a grace ended
(`recompute_ended_graces`). When that session's transaction commits,
`_write_changed_documents` (a `before_commit` hook, so it runs inside the same transaction)
recomputes the documents of the users concerned, and for each document that differs from the
stored one stores it with the next version and writes a `billing_notifications` row. Either
both the change and its notification commit, or neither. A change that leaves a document as
it was writes no version (only, when it moved, the stored grace end: `Computed`).

A catch-up is the exception (`defer_documents`: the reconciler's polled batches). Its users'
rows change batch after batch, and a document per batch would notify states that were already
history. Each batch instead marks its users' `billing_states` rows `stale`, in its own
transaction, and the poller recomputes the stale documents (`refresh_stale`) when a drain
starts and ends, and every `tuning.REFRESH_DOCUMENTS_SECONDS` during a long one: the host app
is told the state a user ends in, once. The mark is durable: a reconciler killed in between
leaves it for the next drain, and `GET /billing/state` recomputes a stale document before
serving it. Any other writer's recomputation of a user clears the user's mark.

Concurrent writers on PostgreSQL: the users' `billing_states` rows are locked (in user id
order) before their documents are read, so two transactions touching one user take turns and
the second reads what the first committed. SQLite has one writer at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Table, bindparam, event, func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.dialect import execute_rows, in_ids, insert_for, insert_rows
from collab_billing.db.engine import read_only, transaction
from collab_billing.db.models import (
    BillingCustomer,
    BillingDiscount,
    BillingNotification,
    BillingPreference,
    BillingPrice,
    BillingState,
    BillingSubscription,
    User,
)
from collab_billing.state import document as state
from collab_billing.state.access import rules_of, utc

_KEY = "collab_billing.state_changes"
_DEFER = "collab_billing.defer_documents"
NOTIFICATION_TYPE = "billing.state.updated"
_states: Table = BillingState.__table__  # type: ignore[assignment]
_notifications: Table = BillingNotification.__table__  # type: ignore[assignment]
_users: Table = User.__table__  # type: ignore[assignment]


@dataclass
class Changes:
    """What a transaction changed that state documents read."""

    customers: set[int] = field(default_factory=set)  # our billing_customers ids
    prices: set[str] = field(default_factory=set)  # Stripe price ids
    products: set[str] = field(default_factory=set)  # Stripe product ids
    coupons: set[str] = field(default_factory=set)  # Stripe coupon ids
    users: set[int] = field(default_factory=set)  # our users ids

    def __bool__(self) -> bool:
        return bool(self.customers or self.prices or self.products or self.coupons or self.users)


def mark(
    session: Session,
    customers: Collection[int | None] = (),
    prices: Collection[str] = (),
    products: Collection[str] = (),
    users: Collection[int] = (),
    coupons: Collection[str] = (),
) -> None:
    """Note that rows of these customers (or these catalog objects, or these users' own rows)
    changed in this session's transaction; their users' documents are recomputed when it
    commits."""
    changes: Changes = session.info.setdefault(_KEY, Changes())
    changes.customers.update(c for c in customers if c is not None)
    changes.prices.update(prices)
    changes.products.update(products)
    changes.coupons.update(coupons)
    changes.users.update(users)


def mark_rows(session: Session, key: str, rows: Collection[dict[str, Any]]) -> None:
    """`mark` the rows of a mirrored type (keyed by the Stripe id column `key`) just written:
    the catalog's by their ids, every other type's by the customer that owns them (its rows
    carry `billing_customer_id`: `MirroredType.row`). A row of neither kind is a programming
    error, raised rather than silently left unnotified."""
    if key == "stripe_price_id":
        mark(session, prices=[row[key] for row in rows])
    elif key == "stripe_product_id":
        mark(session, products=[row[key] for row in rows])
    elif key == "stripe_coupon_id":
        mark(session, coupons=[row[key] for row in rows])
    elif all("billing_customer_id" in row for row in rows):
        mark(session, customers=[row["billing_customer_id"] for row in rows])
    else:
        raise ValueError(f"rows keyed by {key} name no owning customer: their users are unknown")


def defer_documents(session: Session) -> None:
    """In this session's transaction, mark the users its changes concern `stale` instead of
    recomputing their documents (`refresh_stale` does, later)."""
    session.info[_DEFER] = True


@event.listens_for(Session, "before_commit")
def _write_changed_documents(session: Session) -> None:
    changes: Changes | None = session.info.pop(_KEY, None)
    deferred = session.info.pop(_DEFER, False)
    if changes:
        users = users_concerned(session, changes)
        if deferred:
            mark_stale(session, users)
        else:
            write_changed_documents(session, users)


@event.listens_for(Session, "after_rollback")
def _forget_changes(session: Session) -> None:
    session.info.pop(_KEY, None)
    session.info.pop(_DEFER, None)


# Built once (`db/queries.py` says why).
_PRICES_OF_PRODUCTS = select(BillingPrice.stripe_price_id).where(
    in_ids(BillingPrice.stripe_product_id)
)
_SUBSCRIBERS_OF_PRICES = select(BillingSubscription.billing_customer_id).where(
    in_ids(BillingSubscription.stripe_price_id)
)
_HOLDERS_OF_COUPONS = select(BillingDiscount.billing_customer_id).where(
    in_ids(BillingDiscount.stripe_coupon_id)
)
_USERS_OF_CUSTOMERS = select(BillingCustomer.user_id).where(in_ids(BillingCustomer.id))
_METERED = select(BillingPrice.stripe_price_id).where(
    in_ids(BillingPrice.stripe_price_id), BillingPrice.stripe_meter_id.is_not(None)
)
_CAPPED_USERS = select(BillingPreference.user_id).where(
    BillingPreference.max_monthly_spend_cents.is_not(None)
)
_STORED_FOR_UPDATE = (
    select(
        BillingState.user_id,
        BillingState.version,
        BillingState.document,
        BillingState.stale,
        BillingState.grace_ends_at,
    )
    .where(in_ids(BillingState.user_id))
    .order_by(BillingState.user_id)
    .with_for_update()
)
_UNMARK = update(_states).where(in_ids(_states.c.user_id)).values(stale=False)
# An unchanged document's grace end moved (the one that ended was a subscription's beside an
# `active` one, whose features it did not change): no version, no notification.
_MOVE_GRACE_END = (
    update(_states)
    .where(_states.c.user_id == bindparam("b_user_id"))
    .values(grace_ends_at=bindparam("b_grace_ends_at"), stale=False)
)
_STALE = (
    select(BillingState.user_id)
    .where(BillingState.stale)
    .order_by(BillingState.user_id)
    .limit(bindparam("limit"))
)


def users_concerned(session: Session, changes: Changes) -> list[int]:
    """Our user ids whose documents may read what changed, in id order."""
    customers = set(changes.customers)
    prices = set(changes.prices)
    if changes.products:
        prices.update(session.scalars(_PRICES_OF_PRODUCTS, {"ids": list(changes.products)}))
    users = set(changes.users)
    if prices:  # a catalog change renames the plan of every subscriber to those prices
        customers.update(session.scalars(_SUBSCRIBERS_OF_PRICES, {"ids": list(prices)}))
        # A metered price prices usage: of its subscribers, or (the meter's newest) of users
        # without one. Only a cap reads the cost: the users with one are recomputed.
        if session.scalar(_METERED, {"ids": list(prices)}) is not None:
            users.update(capped_users(session))
    if changes.coupons:  # what its discounts take off the usage estimate
        customers.update(session.scalars(_HOLDERS_OF_COUPONS, {"ids": list(changes.coupons)}))
    if customers:
        users.update(session.scalars(_USERS_OF_CUSTOMERS, {"ids": list(customers)}))
    return sorted(users)


def capped_users(session: Session) -> list[int]:
    """The users with a spend cap: what usage costs (a metered price, a meter turned off)
    can only change their documents."""
    return list(session.scalars(_CAPPED_USERS))


def write_changed_documents(session: Session, user_ids: list[int]) -> int:
    """Store the changed documents of these users with their next versions and write their
    notifications; returns how many changed."""
    if not user_ids:
        return 0
    connection = session.connection()  # Core statements: many rows, no ORM bookkeeping
    dialect = session.get_bind().dialect.name
    connection.execute(_states_of_users(dialect, stale=False), {"ids": user_ids})
    stored = {row.user_id: row for row in session.execute(_STORED_FOR_UPDATE, {"ids": user_ids})}
    changed: list[dict[str, Any]] = []
    unchanged_stale: list[int] = []
    moved: list[dict[str, Any]] = []
    for user_id, (document, grace_ends_at) in state.computed(session, user_ids).items():
        previous = stored[user_id]
        if document != previous.document:
            changed.append(
                {
                    "user_id": user_id,
                    "version": previous.version + 1,
                    "document": document,
                    "grace_ends_at": grace_ends_at,
                    "stale": False,
                }
            )
        elif not _same_time(grace_ends_at, previous.grace_ends_at):
            moved.append({"b_user_id": user_id, "b_grace_ends_at": grace_ends_at})
        elif previous.stale:
            unchanged_stale.append(user_id)
    if unchanged_stale:
        connection.execute(_UNMARK, {"ids": unchanged_stale})
    if moved:
        connection.execute(_MOVE_GRACE_END, moved)
    if not changed:
        return 0
    now = datetime.now(UTC)
    execute_rows(connection, _store_documents(dialect), changed)
    notifications = [
        {
            "user_id": row["user_id"],
            "version": row["version"],
            "payload": {**row["document"], "version": row["version"]},
            "delivered_to": [],
            "attempts": 0,
            "next_attempt_at": 0.0,
            # From Python, not the database: SQLite's CURRENT_TIMESTAMP has whole seconds,
            # and this time is what the commit-to-delivery delay is measured from.
            "created_at": now,
        }
        for row in changed
    ]
    execute_rows(connection, _insert_notifications(dialect), notifications)
    return len(changed)


def _same_time(computed: datetime | None, stored: datetime | None) -> bool:
    """Whether a stored time is the computed one (SQLite hands back naive datetimes, UTC)."""
    if computed is None or stored is None:
        return computed is stored
    return utc(computed) == utc(stored)


@cache
def _store_documents(dialect: str) -> Any:
    """The changed documents' rows (which exist: `write_changed_documents` made them), one
    statement for all on PostgreSQL (`insert_rows`)."""
    columns = ("user_id", "version", "document", "grace_ends_at", "stale")
    statement = insert_rows(dialect, _states, columns)
    changed = {name: statement.excluded[name] for name in columns if name != "user_id"}
    return statement.on_conflict_do_update(
        index_elements=["user_id"], set_={**changed, "updated_at": func.now()}
    )


@cache
def _insert_notifications(dialect: str) -> Any:
    columns = ("user_id", "version", "payload", "delivered_to", "attempts", "next_attempt_at")
    return insert_rows(dialect, _notifications, (*columns, "created_at"))


def mark_stale(session: Session, user_ids: list[int]) -> None:
    """Mark these users' documents stale, in one statement. Rows stale already are left
    alone: a catch-up marks a user in batch after batch, and on PostgreSQL each rewrite of a
    row is a new row version. Rows are taken in user id order: PostgreSQL's row locks are
    taken in the order every writer of `billing_states` takes them."""
    if user_ids:
        statement = _states_of_users(session.get_bind().dialect.name, stale=True)
        session.connection().execute(statement, {"ids": user_ids})


@cache
def _states_of_users(dialect: str, stale: bool) -> Any:
    """`INSERT INTO billing_states ... SELECT` the users bound as `ids`, in id order: with
    `stale`, marking the existing rows stale; else leaving them as they are. One statement
    and one list parameter, however many users (not a row of parameters each)."""
    users = (
        select(_users.c.id, literal(0), literal(stale))
        .where(in_ids(_users.c.id))
        .order_by(_users.c.id)
    )
    statement = insert_for(dialect, _states).from_select(["user_id", "version", "stale"], users)
    if not stale:
        return statement.on_conflict_do_nothing(index_elements=["user_id"])
    return statement.on_conflict_do_update(
        index_elements=["user_id"], set_={"stale": True}, where=_states.c.stale.is_(False)
    )


def mark_every_document_stale(factory: sessionmaker[Session], batch: int = 1000) -> None:
    """Mark every stored document stale, a transaction per `batch` users in id order (the
    order every writer of `billing_states` locks its rows in)."""
    after = 0
    while True:
        with transaction(factory) as session:
            user_ids = list(
                session.scalars(
                    select(_states.c.user_id)
                    .where(_states.c.user_id > after)
                    .order_by(_states.c.user_id)
                    .limit(batch)
                )
            )
            mark_stale(session, user_ids)
        if len(user_ids) < batch:
            return
        after = user_ids[-1]


def refresh_stale(factory: sessionmaker[Session], users: int = 500) -> int:
    """Recompute the documents of up to `users` users marked stale, in one transaction,
    storing and notifying those that changed; returns how many were recomputed (fewer than
    `users`: none is left)."""
    with read_only(factory) as session:  # none stale (most polls): no write transaction
        if session.scalar(_STALE, {"limit": 1}) is None:
            return 0
    with transaction(factory) as session:
        stale = list(session.scalars(_STALE, {"limit": users}))
        write_changed_documents(session, stale)
    return len(stale)


def refresh_every_stale(
    factory: sessionmaker[Session], users: int = 500, between: Callable[[], None] = lambda: None
) -> None:
    """`refresh_stale` until none is left, calling `between` after each full transaction."""
    while refresh_stale(factory, users) == users:
        between()


def recompute_ended_graces(factory: sessionmaker[Session], limit: int = 1000) -> int:
    """Recompute the documents whose stored grace end (`state.document.Computed`: the
    earliest of the user's subscriptions', whatever the access) has passed by the factory's
    clock (no row changed: time did), so that the new version (`blocked`; or, beside an
    `active` subscription, without the features only the ended one gave) is stored and
    notified. Each recomputation stores the next grace end, or none. Cheap when nothing
    ended (one indexed statement); returns how many users were recomputed."""
    with read_only(factory) as session:
        now = rules_of(session).clock()
        ended = list(
            session.scalars(
                select(BillingState.user_id)
                .where(BillingState.grace_ends_at <= now)
                .order_by(BillingState.user_id)
                .limit(limit)
            )
        )
    if ended:
        with transaction(factory) as session:
            mark(session, users=ended)
    return len(ended)
