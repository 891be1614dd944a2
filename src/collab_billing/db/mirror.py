"""Writes Stripe's customer and subscription objects into our rows."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any, NamedTuple

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from collab_billing.db.ledger import (
    ListStatement,
    chunks,
    dialect_insert,
    is_postgres,
    json_array,
)
from collab_billing.db.models import BillingCustomer, User
from collab_billing.stripe_objects import ObjectFields, id_of


class SubscriptionState(NamedTuple):
    """What we keep of a Stripe subscription, as of the `created` second of an event."""

    stripe_subscription_id: str
    stripe_customer_id: str
    status: str
    cancel_at_period_end: bool
    # Unix seconds, as Stripe gives them; the database turns them into timestamps.
    cancel_at: int | None
    canceled_at: int | None
    current_period_end: int | None
    price_id: str | None
    as_of: int

    @classmethod
    def from_stripe(cls, subscription: dict[str, Any], as_of: int) -> SubscriptionState:
        """From a subscription read through the gateway as a plain dict."""
        return cls.from_fields(ObjectFields.from_dict(subscription), as_of)

    @classmethod
    def from_fields(cls, subscription: ObjectFields, as_of: int) -> SubscriptionState:
        items = subscription.items.data if subscription.items else []
        # Since API 2025-03-31 the period lives on the items; older payloads have it on top.
        period_ends = [i.current_period_end for i in items if i.current_period_end]
        period_end = max(period_ends) if period_ends else subscription.current_period_end
        price = items[0].price if items else None
        if subscription.id is None or subscription.customer is None or not subscription.status:
            raise ValueError("a subscription needs an id, a customer and a status")
        return cls(
            subscription.id,
            id_of(subscription.customer),
            subscription.status,
            bool(subscription.cancel_at_period_end),
            subscription.cancel_at or None,
            subscription.canceled_at or None,
            period_end or None,
            id_of(price) if price else None,
            as_of,
        )


def customer_id_of(subscription: ObjectFields) -> str:
    if subscription.customer is None:
        raise ValueError("a subscription needs a customer")
    return id_of(subscription.customer)


_WATERMARKS = ListStatement.select(
    "stripe_subscription_id, stripe_state_as_of", "billing_subscriptions", "stripe_subscription_id"
)
_CUSTOMERS = ListStatement.select(
    "stripe_customer_id, id, user_id", "billing_customers", "stripe_customer_id"
)
_USERS = ListStatement.select("github_user_id, id", "users", "github_user_id", "bigint")


def subscription_watermarks(session: Session, ids: Collection[str]) -> dict[str, int]:
    return {row[0]: row[1] for row in _WATERMARKS.rows(session, ids)}


def customer_rows(session: Session, stripe_customer_ids: Collection[str]) -> dict[str, int]:
    """Known customers, deleted ones included: Stripe id -> our id."""
    return {row[0]: row[1] for row in _CUSTOMERS.rows(session, stripe_customer_ids)}


class CustomerIds:
    """Stripe customer id -> our id, remembered across batches: a customer's row, once linked,
    keeps its id and its Stripe id (the service never deletes or relinks one), so a committed
    link can be trusted without reading it again. At a drain's pace this read was ~8% of the
    applying thread on SQLite: most batches name the same customers again. Bounded: past
    `limit` customers the older half is forgotten. (Starting over instead, a backlog naming
    about `limit` customers read them all again every few dozen batches: 10% of the applying
    thread at a million events.)"""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._ids: dict[str, int] = {}

    def lookup(self, session: Session, stripe_customer_ids: Collection[str]) -> dict[str, int]:
        """The known ones of `stripe_customer_ids`; those not remembered are read."""
        ids = self._ids
        missing = [cid for cid in stripe_customer_ids if cid not in ids]
        found = customer_rows(session, missing) if missing else {}
        known = {cid: ids[cid] for cid in stripe_customer_ids if cid in ids}
        known.update(found)
        return known

    def remember(self, committed: dict[str, int]) -> None:
        """Links seen or made by a transaction that has committed."""
        ids = self._ids
        ids.update(committed)
        if len(ids) > self.limit:
            # Oldest first: a dict keeps the order in which keys were added.
            self._ids = dict(islice(ids.items(), len(ids) - self.limit // 2, None))

    def forget(self) -> None:
        self._ids.clear()


# Column -> its PostgreSQL type, in the order of the values of one row. Times travel as Unix
# seconds and become timestamps in the statement: converting 2,000 rows' datetimes in Python
# cost more than the whole insert.
_SUBSCRIPTION_COLUMNS = {
    "billing_customer_id": "bigint",
    "stripe_subscription_id": "text",
    "stripe_subscription_status": "text",
    "stripe_price_id": "text",
    "stripe_cancel_at_period_end": "boolean",
    "stripe_cancel_at": "bigint",
    "stripe_canceled_at": "bigint",
    "stripe_current_period_end": "bigint",
    "stripe_state_as_of": "bigint",
}
_TIME_COLUMNS = ("stripe_cancel_at", "stripe_canceled_at", "stripe_current_period_end")
# A subscription never moves to another customer: leaving its customer out of the update spares
# an index entry and a foreign-key check per row (a third of the upsert's time on SQLite).
_ON_CONFLICT_UPDATE = (
    " ON CONFLICT (stripe_subscription_id) DO UPDATE SET "
    + ", ".join(
        f"{name} = excluded.{name}"
        for name in _SUBSCRIPTION_COLUMNS
        if name not in ("stripe_subscription_id", "billing_customer_id")
    )
    + ", updated_at = CURRENT_TIMESTAMP"
)


def _postgres_value(index: int, name: str) -> str:
    value = f"CAST(row ->> {index} AS {_SUBSCRIPTION_COLUMNS[name]})"
    return f"to_timestamp({value})" if name in _TIME_COLUMNS else value


def _sqlite_value(index: int, name: str) -> str:
    # The text SQLAlchemy's DateTime stores in SQLite (UTC, microseconds always present), so
    # that rows written either way read back, compare and sort alike.
    value = f"value ->> {index}"
    if name in _TIME_COLUMNS:
        return f"strftime('%Y-%m-%d %H:%M:%S', {value}, 'unixepoch') || '.000000'"
    return value


# The whole batch in one statement, its rows built server-side from one JSON array of rows
# (see `ledger.matching`). On PostgreSQL as `jsonb`, parsed once: with `json` each `->>`
# parses its row again (2.4x the statement's time). On SQLite, `WHERE true` tells the parser
# that ON CONFLICT belongs to the INSERT.
_INSERT_SUBSCRIPTIONS = f"INSERT INTO billing_subscriptions ({', '.join(_SUBSCRIPTION_COLUMNS)})"
_UPSERT_POSTGRES = text(
    f"{_INSERT_SUBSCRIPTIONS} SELECT "
    + ", ".join(_postgres_value(*column) for column in enumerate(_SUBSCRIPTION_COLUMNS))
    + " FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS row"
    + _ON_CONFLICT_UPDATE
)
_UPSERT_SQLITE = text(
    f"{_INSERT_SUBSCRIPTIONS} SELECT "
    + ", ".join(_sqlite_value(*column) for column in enumerate(_SUBSCRIPTION_COLUMNS))
    + " FROM json_each(:rows) WHERE true"
    + _ON_CONFLICT_UPDATE
)


# The same, writing only over a row of an older second (`_OLDER`; with `_NOT_NEWER` also one
# of the same second), and telling which rows it wrote. PostgreSQL only: SQLite's driver steps
# through `RETURNING` rows one by one, a turn on the GIL each (see `ListStatement.select`).
_OLDER = " WHERE billing_subscriptions.stripe_state_as_of < excluded.stripe_state_as_of"
_NOT_NEWER = " WHERE billing_subscriptions.stripe_state_as_of <= excluded.stripe_state_as_of"
_RETURNING = " RETURNING stripe_subscription_id"
_UPSERT_POSTGRES_OVER_OLDER = text(f"{_UPSERT_POSTGRES.text}{_OLDER}{_RETURNING}")
_UPSERT_POSTGRES_OVER_NOT_NEWER = text(f"{_UPSERT_POSTGRES.text}{_NOT_NEWER}{_RETURNING}")


def upsert_newer(
    session: Session,
    states: Sequence[SubscriptionState],
    customer_ids: dict[str, int],
    same_second: bool,
) -> set[str]:
    """Write each state whose subscription has no row or a row of an older second (with
    `same_second`, also one of the same second: a state read from Stripe then, which is as new
    as anything of that second); returns the ids written. Each subscription at most once.

    On PostgreSQL one statement decides and writes: reading the rows' seconds first cost a
    batch of 2,000 events 16 ms of the server's time at a million events (of ~110 ms). On
    SQLite the seconds are read first, packed in one row."""
    if not states:
        return set()
    if is_postgres(session):
        statement = _UPSERT_POSTGRES_OVER_NOT_NEWER if same_second else _UPSERT_POSTGRES_OVER_OLDER
        result = session.connection().execute(
            statement, {"rows": _subscription_rows(states, customer_ids)}
        )
        return {row[0] for row in result}
    marks = subscription_watermarks(session, [s.stripe_subscription_id for s in states])
    newer = [
        state
        for state in states
        if (mark := marks.get(state.stripe_subscription_id)) is None
        or mark < state.as_of
        or (same_second and mark == state.as_of)
    ]
    upsert_subscriptions(session, newer, customer_ids)
    return {state.stripe_subscription_id for state in newer}


def upsert_subscriptions(
    session: Session, states: Sequence[SubscriptionState], customer_ids: dict[str, int]
) -> None:
    """Insert or overwrite subscription rows. The caller has decided the states are newest,
    and gives each subscription at most once (one statement cannot update a row twice)."""
    if not states:
        return
    statement = _UPSERT_POSTGRES if is_postgres(session) else _UPSERT_SQLITE
    session.connection().execute(statement, {"rows": _subscription_rows(states, customer_ids)})


def _subscription_rows(states: Sequence[SubscriptionState], customer_ids: dict[str, int]) -> str:
    rows = [
        (
            customer_ids[state.stripe_customer_id],
            state.stripe_subscription_id,
            state.status,
            state.price_id,
            state.cancel_at_period_end,
            state.cancel_at,
            state.canceled_at,
            state.current_period_end,
            state.as_of,
        )
        for state in states
    ]
    return json_array(rows)


def user_ids_for_github_ids(session: Session, github_user_ids: Collection[int]) -> dict[int, int]:
    """GitHub user id -> our user id, for those we have."""
    return {row[0]: row[1] for row in _USERS.rows(session, sorted(set(github_user_ids)))}


# One statement whose rows are built server-side, in the order given (an earlier link takes
# the user or the customer first; DO NOTHING skips a row that conflicts with one inserted
# before it by the same statement). The driver's executemany, row by row, took ~110 ms for
# 2,000 links on PostgreSQL.
_INSERT_LINKS = "INSERT INTO billing_customers (user_id, stripe_customer_id) "
_LINK_POSTGRES = text(
    _INSERT_LINKS + "SELECT CAST(link ->> 0 AS bigint), link ->> 1 "
    "FROM jsonb_array_elements(CAST(:links AS jsonb)) WITH ORDINALITY AS l(link, n) "
    "ORDER BY n ON CONFLICT DO NOTHING"
)
_LINK_SQLITE = text(
    _INSERT_LINKS + "SELECT value ->> 0, value ->> 1 FROM json_each(:links) WHERE true "
    "ORDER BY key ON CONFLICT DO NOTHING"
)


def link_customers_if_free(session: Session, links: Sequence[tuple[int, str]]) -> dict[str, int]:
    """`link_customer_if_free` for many (user id, Stripe customer id) pairs, in order: a user
    who has a customer already (or gets one earlier in `links`) is not linked again. Returns
    Stripe id -> our customer id for the pairs that are linked now."""
    if not links:
        return {}
    statement = _LINK_POSTGRES if is_postgres(session) else _LINK_SQLITE
    session.connection().execute(statement, {"links": json_array(links)})
    wanted: dict[str, int] = {}  # the first pair of each customer is the one that can link
    for user_id, cid in links:
        wanted.setdefault(cid, user_id)
    rows = _CUSTOMERS.rows(session, list(wanted))
    return {cid: id_ for cid, id_, user_id in rows if wanted.get(cid) == user_id}


def user_id_for_github_id(session: Session, github_user_id: int) -> int | None:
    return session.scalar(select(User.id).where(User.github_user_id == github_user_id))


def link_customer_if_free(session: Session, user_id: int, stripe_customer_id: str) -> int | None:
    """Link a Stripe customer to a user who has none yet; returns our customer id or None."""
    insert = dialect_insert(session)
    session.execute(
        insert(BillingCustomer)
        .values(user_id=user_id, stripe_customer_id=stripe_customer_id)
        .on_conflict_do_nothing()
    )
    return session.scalar(
        select(BillingCustomer.id).where(
            BillingCustomer.stripe_customer_id == stripe_customer_id,
            BillingCustomer.user_id == user_id,
        )
    )


def mark_customers_deleted(session: Session, stripe_customer_ids: Collection[str]) -> None:
    for chunk in chunks(list(stripe_customer_ids)):
        for customer in session.scalars(
            select(BillingCustomer).where(
                BillingCustomer.stripe_customer_id.in_(chunk),
                BillingCustomer.stripe_deleted_at.is_(None),
            )
        ):
            customer.stripe_deleted_at = datetime.now(UTC)
