"""The schema, in SQLAlchemy 2's typed ORM style. One schema for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit names so that Alembic migrations are identical on both engines.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, so BIGINT ids are INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now_column() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def _updated_column() -> Mapped[datetime]:
    return mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )


class MirroredRow:
    """The columns every mirrored type's row has (see `mirror.registry`)."""

    # `created` of the newest event (or read) applied: the watermark that orders payloads.
    stripe_state_as_of: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Raised by every write of the row (docs/reconciliation.md, "Reads").
    stripe_state_version: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    created_at: Mapped[datetime] = _now_column()
    updated_at: Mapped[datetime] = _updated_column()


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    github_user_id: Mapped[int] = mapped_column(BigInteger, unique=True, nullable=False)
    github_login: Mapped[str] = mapped_column(String(255), nullable=False)
    email_address: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = _now_column()


class BillingCustomer(Base):
    __tablename__ = "billing_customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    # Deletion is terminal on Stripe, so a tombstone makes customer events commute.
    stripe_deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the customer's one trial was claimed, as its Checkout is created (`billing/trials`).
    trial_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now_column()


class BillingSubscription(MirroredRow, Base):
    __tablename__ = "billing_subscriptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    billing_customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True, nullable=False
    )
    stripe_subscription_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    stripe_subscription_status: Mapped[str] = mapped_column(String(32), nullable=False)
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    stripe_cancel_at_period_end: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False
    )
    stripe_cancel_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    quantity: Mapped[int | None] = mapped_column(Integer)
    stripe_trial_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Stripe's `cancellation_details.reason` (e.g. cancellation_requested, payment_failed).
    stripe_cancellation_reason: Mapped[str | None] = mapped_column(String(64))
    stripe_current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The prices of all the subscription's items: `stripe_price_id` is its plan, and a metered
    # price beside it is what its usage is billed at. None: mirrored before this column.
    stripe_item_price_ids: Mapped[list[str] | None] = mapped_column(JSON)
    # Each item's `created` by its price (unix seconds): Stripe bills a metered item's usage
    # from when it was added. None: mirrored before this column.
    stripe_item_created: Mapped[dict[str, int] | None] = mapped_column(JSON)
    # Stripe's `created`: the order of a user's subscriptions (None: mirrored before it).
    stripe_created: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Stripe's `ended_at`: the usage until then is not this user's to pay any more.
    stripe_ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BillingPrice(MirroredRow, Base):
    """A Stripe price, mirrored whoever it belongs to: the catalog we sell from."""

    __tablename__ = "billing_prices"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_price_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    lookup_key: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_product_id: Mapped[str] = mapped_column(String(255), nullable=False)
    unit_amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(16), nullable=False)
    recurring_interval: Mapped[str | None] = mapped_column(String(16))
    recurring_interval_count: Mapped[int | None] = mapped_column(Integer)
    usage_type: Mapped[str | None] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Metered prices: the meter they bill, and the amount with fractions of a cent.
    stripe_meter_id: Mapped[str | None] = mapped_column(String(255), index=True)
    unit_amount_decimal: Mapped[str | None] = mapped_column(String(64))
    # Tiered prices (`billing_scheme=tiered`): `graduated` or `volume`, and Stripe's tiers as
    # [{up_to (None: inf), unit_amount_decimal, flat_amount_decimal}] (decimal text or None).
    billing_scheme: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default="per_unit"
    )
    tiers_mode: Mapped[str | None] = mapped_column(String(16))
    tiers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # Stripe's `transform_quantity` (package pricing): the quantity is divided by this and
    # rounded (`up` or `down`) before it is priced. None: billed as counted.
    transform_divide_by: Mapped[int | None] = mapped_column(BigInteger)
    transform_round: Mapped[str | None] = mapped_column(String(8))


class BillingProduct(MirroredRow, Base):
    """A Stripe product, mirrored for its name (prices name their product by id)."""

    __tablename__ = "billing_products"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_product_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    name: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class BillingProductFeatureSync(MirroredRow, Base):
    """When a product's features were last listed (`mirror.product_features`): the watermark
    that orders those listings (a product with no feature has no `billing_product_features`
    row to hold it). Stripe sends no event of a product's features."""

    __tablename__ = "billing_product_feature_syncs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_product_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)


class BillingProductFeature(Base):
    """A feature attached to a product (`GET /v1/products/{id}/features`): which features a
    subscription's products give, beside the customer's active entitlements (which do not
    say which subscription gives them)."""

    __tablename__ = "billing_product_features"
    __table_args__ = (UniqueConstraint("stripe_product_id", "stripe_feature_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_product_id: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    stripe_feature_id: Mapped[str] = mapped_column(String(255), nullable=False)
    lookup_key: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = _now_column()


class BillingCoupon(MirroredRow, Base):
    """A Stripe coupon (the catalog of what discounts take off; `mirror.coupons`). Deleting a
    coupon leaves the discounts made from it as they are: the row is a tombstone that keeps
    what it took off."""

    __tablename__ = "billing_coupons"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_coupon_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    percent_off: Mapped[float | None] = mapped_column(Float)
    amount_off: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(16))
    duration: Mapped[str | None] = mapped_column(String(16))  # once, repeating, forever
    duration_in_months: Mapped[int | None] = mapped_column(Integer)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class BillingDiscount(MirroredRow, Base):
    """A Stripe discount (a coupon applied) of one of our customers (`mirror.discounts`), for
    the usage estimate; a tombstone once Stripe deleted it (ended, or removed)."""

    __tablename__ = "billing_discounts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    billing_customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True, nullable=False
    )
    stripe_discount_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    stripe_coupon_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # What it applies to: a subscription (the whole of it), or one of its items (None:
    # neither, e.g. the customer's own discount).
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_subscription_item_id: Mapped[str | None] = mapped_column(String(255))
    stripe_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # A `repeating` coupon's end (None: `once` or `forever`).
    stripe_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class BillingInvoice(MirroredRow, Base):
    """A Stripe invoice of one of our customers (access and the overdue gate read these)."""

    __tablename__ = "billing_invoices"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    billing_customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True, nullable=False
    )
    stripe_invoice_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    # Its Stripe customer: the user's row may since have moved to a new one (None: mirrored
    # before this column; taken as the row's).
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    currency: Mapped[str] = mapped_column(String(16), nullable=False)
    amount_due: Mapped[int] = mapped_column(BigInteger, nullable=False)
    amount_paid: Mapped[int] = mapped_column(BigInteger, nullable=False)
    amount_remaining: Mapped[int] = mapped_column(BigInteger, nullable=False)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    number: Mapped[str | None] = mapped_column(String(255))
    billing_reason: Mapped[str | None] = mapped_column(String(64))
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False)
    next_payment_attempt: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Stripe's `created`: the order of `GET /billing/invoices` (newest first).
    stripe_created: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # An automatic invoice's payment is first attempted when it is finalized: the grace
    # period of a failed one counts from here.
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    due_date: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UnmatchedStripeCustomer(Base):
    """A Stripe customer that names no user of ours (another product's, or a user not yet
    created): its events are settled without asking Stripe about it again. It is read again
    once a user with its `github_user_id` appears."""

    __tablename__ = "unmatched_stripe_customers"

    stripe_customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    github_user_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    # Once set, never cleared: deletion is terminal on Stripe, and an event showing the customer
    # live after it is an older one (`customers.link_or_remember`).
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    seen_at: Mapped[datetime] = _now_column()
    # Raised by every write of the row (each sighting, each batch that skips an event of one
    # of its objects: docs/reconciliation.md, "Reads").
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0, server_default="0")


class ProcessedStripeEvent(Base):
    __tablename__ = "processed_stripe_events"

    stripe_event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    stripe_event_type: Mapped[str] = mapped_column(String(255), nullable=False)
    stripe_event_created_timestamp: Mapped[int] = mapped_column(
        BigInteger, index=True, nullable=False
    )
    processed_at: Mapped[datetime] = _now_column()


class PendingStripeEvent(Base):
    """An event that failed to apply, or waits behind one that did, kept for retry."""

    __tablename__ = "pending_stripe_events"

    stripe_event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    stripe_event_type: Mapped[str] = mapped_column(String(255), nullable=False)
    stripe_event_created_timestamp: Mapped[int] = mapped_column(BigInteger, nullable=False)
    stripe_object_id: Mapped[str] = mapped_column(String(255), index=True, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    first_seen_at: Mapped[datetime] = _now_column()


class ReconcilerState(Base):
    """Small key/value rows: the events cursor, the last resync, ..."""

    __tablename__ = "reconciler_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = _updated_column()


class DecimalText(TypeDecorator[Decimal]):
    """A decimal kept as its digits. SQLite has no decimal type: its NUMERIC keeps a double,
    which SQLAlchemy reads back with binary noise (98765.4321 as 98765.432100000005)."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        return None if value is None else format(value, "f")

    def process_result_value(self, value: str | None, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


# Usage values: up to 18 digits before the point and 12 after (Stripe accepts decimals).
UsageValue = Numeric(30, 12).with_variant(DecimalText(), "sqlite")


class BillingMeter(Base):
    """A Stripe billing meter, copied from `/v1/billing/meters` on resync and at start, so
    that ingest checks `meter` and the sender names the payload keys without asking Stripe."""

    __tablename__ = "billing_meters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stripe_meter_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    event_name: Mapped[str] = mapped_column(String(100), index=True, nullable=False)
    display_name: Mapped[str] = mapped_column(String(250), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    aggregation_formula: Mapped[str] = mapped_column(String(16), nullable=False)
    customer_payload_key: Mapped[str] = mapped_column(String(100), nullable=False)
    value_payload_key: Mapped[str] = mapped_column(String(100), nullable=False)
    updated_at: Mapped[datetime] = _updated_column()


class BillingUsageEvent(Base):
    """The usage outbox: one row per accepted usage record, sent to Stripe as a meter event
    by the sender (`pending` -> `sent`, or `failed` when Stripe refuses it for good)."""

    __tablename__ = "billing_usage_events"
    __table_args__ = (
        UniqueConstraint("user_id", "idempotency_key"),
        Index("ix_billing_usage_events_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_billing_usage_events_user_id_timestamp", "user_id", "timestamp"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    meter_event_name: Mapped[str] = mapped_column(String(100), nullable=False)
    value: Mapped[Any] = mapped_column(UsageValue, nullable=False)
    timestamp: Mapped[int] = mapped_column(BigInteger, nullable=False)  # Unix seconds
    idempotency_key: Mapped[str] = mapped_column(String(255), nullable=False)
    # The meter event's `identifier` at Stripe, derived from (user, idempotency key).
    identifier: Mapped[str] = mapped_column(String(100), unique=True, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    created_at: Mapped[datetime] = _now_column()
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class BillingPreference(Base):
    """A user's billing preferences: the monthly spend cap (None: no cap)."""

    __tablename__ = "billing_preferences"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    max_monthly_spend_cents: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = _updated_column()


class BillingEntitlement(Base):
    """A feature a customer is entitled to now (Stripe's active entitlements, listed in full)."""

    __tablename__ = "billing_entitlements"
    __table_args__ = (UniqueConstraint("billing_customer_id", "stripe_feature_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    billing_customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), index=True, nullable=False
    )
    stripe_feature_id: Mapped[str] = mapped_column(String(255), nullable=False)
    lookup_key: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[datetime] = _now_column()


class BillingEntitlementSync(MirroredRow, Base):
    """When a customer's entitlements were last listed: `stripe_state_as_of` is the `created`
    second of the newest summary event (or resync) they reflect, the watermark that orders
    re-listings (a customer with no entitlement has no `billing_entitlements` row to hold it)."""

    __tablename__ = "billing_entitlement_syncs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    billing_customer_id: Mapped[int] = mapped_column(
        ForeignKey("billing_customers.id", ondelete="CASCADE"), unique=True, nullable=False
    )
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)


class BillingState(Base):
    """The last state document of a user (`state.document`), without its version, and that
    version: it grows by one each time the document changes."""

    __tablename__ = "billing_states"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The earliest end of a grace of the user's subscriptions (None: none in grace), after
    # which time alone may change the document (docs/notifications.md, "Time: a grace period
    # ends with no change at Stripe").
    grace_ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    # The user's rows changed since `document` was computed (a catch-up's mark:
    # `state.outbox.defer_documents`).
    stale: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    updated_at: Mapped[datetime] = _updated_column()

    # Partial: the stale documents are found through it whatever the planner's statistics
    # say (gathered while most rows were stale, they would have it read the whole table).
    __table_args__ = (
        Index(
            "ix_billing_states_stale_user_id",
            "user_id",
            postgresql_where=text("stale"),
            sqlite_where=text("stale"),
        ),
    )


class StripeReadDay(Base):
    """Stripe reads made and transactions seen per UTC day (days since the epoch): the read
    budget's rolling 30 days, kept across restarts (`reconcile/budget.py`)."""

    __tablename__ = "stripe_read_days"

    day: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    reads: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    transactions: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class BillingNotification(Base):
    """The notification outbox: one `billing.state.updated` per change of a user's document,
    written in the transaction that changed it, sent by the leading instance's sender."""

    __tablename__ = "billing_notifications"
    __table_args__ = (Index(None, "delivered_at", "user_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True, nullable=False
    )
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # The URLs (of BILLING_NOTIFY_URLS) that answered 2xx; delivered once all have.
    delivered_to: Mapped[list[str]] = mapped_column(JSON, nullable=False, default=list)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now_column()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Given up on after the retry window (3 days); `notifications replay` sends it again.
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When `notifications replay` queued it again: its retry window starts there (null: at
    # `created_at`, which stays the payload's `timestamp`).
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
