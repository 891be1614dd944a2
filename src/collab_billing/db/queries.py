"""Typed queries used by the API and the reconciler. Sessions are passed in by the caller."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Row, RowMapping, bindparam, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from collab_billing.db.dialect import in_ids, insert
from collab_billing.db.models import (
    BillingCustomer,
    BillingDiscount,
    BillingEntitlement,
    BillingEntitlementSync,
    BillingPrice,
    BillingProduct,
    BillingSubscription,
    UnmatchedStripeCustomer,
    User,
)

# Statuses in which the user is (still) entitled to the product.
ACTIVE_STATUSES = frozenset({"active", "trialing", "past_due"})

_users = User.__table__
_customers = BillingCustomer.__table__
_subscriptions = BillingSubscription.__table__
_prices = BillingPrice.__table__
_products = BillingProduct.__table__


def get_user_by_github_user_id(session: Session, github_user_id: int) -> User | None:
    return session.scalars(select(User).where(User.github_user_id == github_user_id)).first()


def list_users(session: Session) -> Sequence[User]:
    return session.scalars(select(User).order_by(User.id)).all()


class Keep(enum.Enum):
    """A field that an update leaves as it is (it was not sent)."""

    KEEP = enum.auto()


KEEP = Keep.KEEP
_USER_COLUMNS = (
    _users.c.id,
    _users.c.github_user_id,
    _users.c.github_login,
    _users.c.email_address,
    _users.c.created_at,
)


def upsert_user(
    session: Session,
    github_user_id: int,
    github_login: str,
    email_address: str | Keep | None = KEEP,
) -> tuple[Row[Any], bool]:
    """Create the user, or update the fields given; returns the user's row and whether it was
    created. Safe against concurrent calls for the same new user: the insert gives way to a
    row another transaction inserted first (`ON CONFLICT DO NOTHING` waits for that
    transaction), and the update then changes that row."""
    changes: dict[str, object] = {"github_login": github_login}
    if email_address is not KEEP:
        changes["email_address"] = email_address
    created = session.execute(
        insert(session, User)
        .values(github_user_id=github_user_id, **changes)
        .on_conflict_do_nothing(index_elements=[_users.c.github_user_id])
        .returning(*_USER_COLUMNS)
    ).first()
    if created is not None:
        return created, True
    updated = session.execute(
        update(User)
        .where(_users.c.github_user_id == github_user_id)
        .values(**changes)
        .returning(*_USER_COLUMNS)
    ).one()
    return updated, False


def get_billing_customer_by_user_id(session: Session, user_id: int) -> BillingCustomer | None:
    return session.scalars(
        select(BillingCustomer).where(BillingCustomer.user_id == user_id)
    ).first()


# A user's subscriptions in the order Stripe created them (row ids follow the order events were
# applied in, which out-of-order webhooks invert); rows mirrored before `stripe_created` first.
OLDEST_FIRST = (_subscriptions.c.stripe_created.asc().nulls_first(), _subscriptions.c.id)


def list_subscriptions_of_user(session: Session, user_id: int) -> Sequence[BillingSubscription]:
    return session.scalars(
        select(BillingSubscription)
        .join(BillingCustomer, BillingSubscription.billing_customer_id == BillingCustomer.id)
        .where(BillingCustomer.user_id == user_id)
        .order_by(*OLDEST_FIRST)
    ).all()


# The columns of a `SubscriptionRow`, in its order: a subscription and its plan's catalog names.
SUBSCRIPTION_ROW_COLUMNS = (
    _subscriptions.c.id,
    _subscriptions.c.stripe_subscription_id,
    _subscriptions.c.stripe_subscription_status,
    _subscriptions.c.stripe_cancel_at_period_end,
    _subscriptions.c.stripe_cancel_at,
    _subscriptions.c.stripe_canceled_at,
    _subscriptions.c.stripe_current_period_start,
    _subscriptions.c.stripe_current_period_end,
    _subscriptions.c.stripe_price_id,
    _subscriptions.c.quantity,
    _subscriptions.c.stripe_trial_end,
    _subscriptions.c.stripe_cancellation_reason,
    _prices.c.lookup_key,
    _products.c.name,
    _prices.c.unit_amount,
    _prices.c.currency,
    _prices.c.recurring_interval,
    _prices.c.recurring_interval_count,
)

# The admin API's hot read, one statement: the user (so that an unknown user is told apart from
# one without subscriptions) and its subscriptions, oldest first.
USER_SUBSCRIPTIONS = (
    select(*SUBSCRIPTION_ROW_COLUMNS)
    .select_from(_users)
    .outerjoin(_customers, _customers.c.user_id == _users.c.id)
    .outerjoin(_subscriptions, _subscriptions.c.billing_customer_id == _customers.c.id)
    .outerjoin(_prices, _prices.c.stripe_price_id == _subscriptions.c.stripe_price_id)
    .outerjoin(_products, _products.c.stripe_product_id == _prices.c.stripe_product_id)
    .where(_users.c.github_user_id == bindparam("github_user_id"))
    .order_by(*OLDEST_FIRST)
)


# The statements of the hot paths (a webhook's transaction, the admin reads) are built once,
# with bind parameters (`dialect.in_ids` for lists): they cost more to build than to run.
CUSTOMERS_SUBSCRIPTIONS = (
    select(_subscriptions.c.billing_customer_id, *SUBSCRIPTION_ROW_COLUMNS)
    .outerjoin(_prices, _prices.c.stripe_price_id == _subscriptions.c.stripe_price_id)
    .outerjoin(_products, _products.c.stripe_product_id == _prices.c.stripe_product_id)
    .where(in_ids(_subscriptions.c.billing_customer_id))
    .order_by(*OLDEST_FIRST)
)


def customers_subscriptions(
    session: Session, billing_customer_ids: Sequence[int]
) -> dict[int, list[SubscriptionRow]]:
    """These customers' subscriptions (by our customer id), oldest first, in one statement."""
    if not billing_customer_ids:
        return {}
    grouped: dict[int, list[SubscriptionRow]] = {}
    for row in session.execute(CUSTOMERS_SUBSCRIPTIONS, {"ids": billing_customer_ids}):
        grouped.setdefault(row[0], []).append(SubscriptionRow._make(row[1:]))
    return grouped


class SubscriptionRow(NamedTuple):
    """A row of `USER_SUBSCRIPTIONS`, in its column order."""

    id: int
    stripe_subscription_id: str
    stripe_subscription_status: str
    stripe_cancel_at_period_end: bool
    stripe_cancel_at: datetime | None
    stripe_canceled_at: datetime | None
    stripe_current_period_start: datetime | None
    stripe_current_period_end: datetime | None
    stripe_price_id: str | None
    quantity: int | None
    stripe_trial_end: datetime | None
    stripe_cancellation_reason: str | None
    # The plan, from the mirrored catalog (None until the price is mirrored).
    price_lookup_key: str | None
    product_name: str | None
    unit_amount: int | None
    currency: str | None
    interval: str | None
    interval_count: int | None


def user_subscriptions(
    db: Connection | Session, github_user_id: int
) -> list[SubscriptionRow] | None:
    """The user's subscriptions, oldest first; None: no such user. (The outer joins give one
    row of NULLs for a user without subscriptions.)"""
    rows = db.execute(USER_SUBSCRIPTIONS, {"github_user_id": github_user_id}).all()
    if not rows:
        return None
    return [SubscriptionRow._make(row) for row in rows if row[0] is not None]


def link_billing_customer(
    session: Session, user_id: int, stripe_customer_id: str
) -> BillingCustomer:
    """Record the user's Stripe customer once, even when two requests race to do it.

    The insert is guarded by the unique `user_id`: the loser of a race reads the winner's row.
    """
    existing = get_billing_customer_by_user_id(session, user_id)
    if existing is not None and existing.stripe_deleted_at is None:
        return existing
    if existing is not None:
        move_to_new_customer(session, existing.id, stripe_customer_id)
        session.refresh(existing)
        return existing
    try:
        with session.begin_nested():
            customer = BillingCustomer(user_id=user_id, stripe_customer_id=stripe_customer_id)
            session.add(customer)
    except IntegrityError:
        winner = get_billing_customer_by_user_id(session, user_id)
        if winner is None:
            raise
        return winner
    return customer


def move_to_new_customer(
    session: Session, billing_customer_id: int, stripe_customer_id: str
) -> None:
    """The customer of this row was deleted on Stripe (a tombstone): the user's row moves to a
    new customer, the old one's entitlements go and its discounts are marked deleted, and the
    old customer is remembered deleted as if its deletion had come first, so that either
    order ends in the same rows (docs/reconciliation.md, "Customers need no watermark")."""
    old = session.execute(
        select(BillingCustomer.stripe_customer_id, User.github_user_id)
        .join(User, User.id == BillingCustomer.user_id)
        .where(BillingCustomer.id == billing_customer_id)
    ).one()
    remembered = insert(session, UnmatchedStripeCustomer).values(
        stripe_customer_id=old.stripe_customer_id, github_user_id=old.github_user_id, deleted=True
    )
    version = UnmatchedStripeCustomer.version + 1
    session.execute(
        remembered.on_conflict_do_update(
            index_elements=["stripe_customer_id"], set_={"deleted": True, "version": version}
        )
    )
    for table in (BillingEntitlementSync, BillingEntitlement):
        session.execute(delete(table).where(table.billing_customer_id == billing_customer_id))
    # Its discounts went with it (Stripe sends no event for them): its own would otherwise
    # count for the new customer's subscriptions (`state.spend.invoice_discounts`).
    session.execute(
        update(BillingDiscount)
        .where(BillingDiscount.billing_customer_id == billing_customer_id)
        .values(deleted=True)
    )
    session.execute(
        update(BillingCustomer)
        .where(BillingCustomer.id == billing_customer_id)
        .values(stripe_customer_id=stripe_customer_id, stripe_deleted_at=None)
    )


def price_row(session: Session, stripe_price_id: str) -> BillingPrice | None:
    """The mirrored price, whatever its state (None: not mirrored)."""
    return session.scalar(
        select(BillingPrice).where(BillingPrice.stripe_price_id == stripe_price_id)
    )


# A price Stripe sells: active, and its product too (Checkout refuses a price whose product
# is archived, though the price still shows `active`); a product not mirrored yet does not
# hide its prices.
_PRODUCT = BillingProduct.stripe_product_id == BillingPrice.stripe_product_id
_ON_SALE = (
    BillingPrice.active,
    ~BillingPrice.deleted,
    or_(BillingProduct.id.is_(None), BillingProduct.active & ~BillingProduct.deleted),
)


def price_on_sale(session: Session, stripe_price_id: str) -> bool:
    """Whether Stripe sells this price now (by the mirror)."""
    found = session.scalar(
        select(BillingPrice.id)
        .outerjoin(BillingProduct, _PRODUCT)
        .where(BillingPrice.stripe_price_id == stripe_price_id, *_ON_SALE)
    )
    return found is not None


def active_metered_prices(session: Session, keys: Sequence[str]) -> list[BillingPrice]:
    """The metered prices on sale whose lookup key or id is one of `keys`, oldest first."""
    return list(
        session.scalars(
            select(BillingPrice)
            .outerjoin(BillingProduct, _PRODUCT)
            .where(
                or_(BillingPrice.lookup_key.in_(keys), BillingPrice.stripe_price_id.in_(keys)),
                *_ON_SALE,
                BillingPrice.stripe_meter_id.is_not(None),
            )
            .order_by(BillingPrice.id)
        )
    )


def sellable_prices(session: Session, lookup_keys: Sequence[str] | None) -> list[RowMapping]:
    """Recurring prices on sale (`_ON_SALE`) with a lookup key (of these keys, if given), by
    lookup key, as rows named like `api.schemas.PriceOut`'s fields (a package's
    `transform_quantity` as its two columns; the product's name from `billing_products`)."""
    product = BillingProduct
    statement = (
        select(
            BillingPrice.lookup_key,
            BillingPrice.stripe_price_id,
            product.name.label("product_name"),
            BillingPrice.unit_amount,
            BillingPrice.unit_amount_decimal,
            BillingPrice.billing_scheme,
            BillingPrice.tiers_mode,
            BillingPrice.tiers,
            BillingPrice.transform_divide_by,
            BillingPrice.transform_round,
            BillingPrice.currency,
            BillingPrice.recurring_interval.label("interval"),
            BillingPrice.recurring_interval_count.label("interval_count"),
            BillingPrice.usage_type,
        )
        .outerjoin(product, _PRODUCT)
        .where(
            *_ON_SALE,
            BillingPrice.recurring_interval.is_not(None),
            BillingPrice.lookup_key.is_not(None),
        )
        .order_by(BillingPrice.lookup_key, BillingPrice.stripe_price_id)
    )
    if lookup_keys is not None:
        statement = statement.where(BillingPrice.lookup_key.in_(lookup_keys))
    # The conditions above make the nullable columns of a recurring price with a key non-null.
    return list(session.execute(statement).mappings())
