"""Compact, immutable records of the emulator's objects.

The store keeps these instead of full Stripe dicts: a record holds only what varies, and the
full Stripe-shaped JSON (with its dozens of constant fields) is rendered on read by
`objects.py`. Because records are frozen, an event can keep a reference to the record as it was
when the event happened: that reference IS the event's `data.object` snapshot, with no copy.
This keeps millions of generated events affordable in memory.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

DAY = 86_400

T = TypeVar("T")


_LAYOUTS: dict[type, tuple[Callable[[Any], tuple[Any, ...]], dict[str, int]]] = {}


def evolve(record: T, **changes: Any) -> T:
    """A copy of a frozen record with some fields changed.

    Equivalent to `dataclasses.replace`, but positional and about twice as fast, which
    matters when bulk generation makes millions of snapshots.
    """
    cls = type(record)
    layout = _LAYOUTS.get(cls)
    if layout is None:
        names = [item.name for item in fields(cls)]  # type: ignore[arg-type]
        layout = _LAYOUTS[cls] = (operator.attrgetter(*names), {n: i for i, n in enumerate(names)})
    getter, index = layout
    values = list(getter(record))
    for name, value in changes.items():
        values[index[name]] = value
    return cls(*values)


Metadata = dict[str, str]


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    created: int
    email: str | None = None
    name: str | None = None
    description: str | None = None
    phone: str | None = None
    metadata: Metadata = field(default_factory=dict)
    address: dict[str, str | None] | None = None
    invoice_prefix: str = ""
    deleted: bool = False
    # invoice_settings.default_payment_method: the card invoices charge (after the
    # subscription's own default_payment_method).
    default_payment_method: str | None = None
    test_clock: str | None = None
    # Its own discount (`discount`, customer_discounts.py): on the invoices of its
    # subscriptions that have none of their own.
    discount: Discount | None = None
    # The currency it is billed in: None until its first subscription (customer_currency.py).
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    created: int
    updated: int
    name: str
    active: bool = True
    description: str | None = None
    metadata: Metadata = field(default_factory=dict)
    default_price: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Tier:
    """One tier of a tiered price (see tiers.py): amounts in cents, as exact decimal text."""

    up_to: int | None  # None: `inf`, the last tier
    unit_amount: str | None = None
    flat_amount: str | None = None


@dataclass(frozen=True, slots=True)
class Price:
    id: str
    created: int
    product: str
    currency: str
    unit_amount: int | None
    interval: str | None = None  # None: a one-time price
    interval_count: int = 1
    nickname: str | None = None
    lookup_key: str | None = None
    metadata: Metadata = field(default_factory=dict)
    active: bool = True
    tax_behavior: str = "unspecified"
    meter: str | None = None  # set: a metered price (`recurring.usage_type=metered`)
    unit_amount_decimal: str | None = None  # set when the amount has fractions of a cent
    billing_scheme: str = "per_unit"  # or "tiered": then `tiers_mode` and `tiers` are set
    tiers_mode: str | None = None
    tiers: tuple[Tier, ...] = ()
    # `transform_quantity`: (divide_by, "up" or "down"): the quantity is divided and rounded
    # before it is priced (package pricing: per 1,000 tokens, say).
    transform_quantity: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    created: int
    price: Price
    quantity: int = 1
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    created: int
    customer: str
    items: tuple[Item, ...]
    status: str
    current_period_start: int
    current_period_end: int
    # Where the billing periods are counted from (periods.py): the start of the first paid
    # period (a trial's end), reset when a trial ends early or the interval changes.
    billing_cycle_anchor: int
    currency: str = "usd"
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    ended_at: int | None = None
    cancellation_reason: str | None = None
    cancellation_comment: str | None = None
    cancellation_feedback: str | None = None
    trial_start: int | None = None
    trial_end: int | None = None
    metadata: Metadata = field(default_factory=dict)
    description: str | None = None
    collection_method: str = "charge_automatically"
    days_until_due: int | None = None
    pause_behavior: str | None = None
    default_payment_method: str | None = None
    latest_invoice: str | None = None
    test_clock: str | None = None  # the customer's, when it has one
    # `trial_settings.end_behavior.missing_payment_method`: create_invoice, cancel or pause.
    missing_payment_method: str = "create_invoice"
    # When `customer.subscription.trial_will_end` was sent for the trial's current end.
    trial_warned_at: int | None = None
    # Its discounts (discounts.py), each applied to the invoices it makes while it lasts.
    discounts: tuple[Discount, ...] = ()

    @property
    def start_date(self) -> int:
        return self.created


@dataclass(frozen=True, slots=True)
class LineItem:
    id: str
    price: Price
    quantity: int


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    created: int
    expires_at: int
    url: str
    line_items: tuple[LineItem, ...]
    success_url: str | None
    cancel_url: str | None
    status: str = "open"
    payment_status: str = "unpaid"
    customer: str | None = None
    customer_email: str | None = None
    client_reference_id: str | None = None
    metadata: Metadata = field(default_factory=dict)
    subscription: str | None = None
    subscription_metadata: Metadata = field(default_factory=dict)
    subscription_description: str | None = None
    trial_period_days: int | None = None
    customer_details_email: str | None = None
    customer_details_name: str | None = None
    locale: str | None = None
    allow_promotion_codes: bool | None = None
    promotion_code: str | None = None  # applied at completion (a promo_... id)
    amount_discount: int = 0
    payment_method_collection: str = "always"
    missing_payment_method: str | None = None
    automatic_tax: bool = False
    billing_address_collection: str | None = None
    tax_id_collection: bool = False


@dataclass(frozen=True, slots=True)
class PortalSession:
    id: str
    created: int
    customer: str
    url: str
    configuration: str
    return_url: str | None = None
    flow: dict[str, Any] | None = None
    locale: str | None = None


@dataclass(frozen=True, slots=True)
class Coupon:
    id: str
    created: int
    duration: str  # once, repeating, forever
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration_in_months: int | None = None
    name: str | None = None
    max_redemptions: int | None = None
    redeem_by: int | None = None
    times_redeemed: int = 0
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PromotionCode:
    id: str
    created: int
    code: str
    coupon: str
    active: bool = True
    customer: str | None = None
    expires_at: int | None = None
    max_redemptions: int | None = None
    times_redeemed: int = 0
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Discount:
    """A coupon applied (Stripe's `discount`, `di_...`): to a subscription, or to the customer
    (`subscription` None), from `start` until `end` (a `repeating` coupon's; None: `once` or
    `forever`). It keeps the coupon as it was redeemed: what it takes off never changes."""

    id: str
    coupon: Coupon
    customer: str
    subscription: str | None
    start: int
    end: int | None = None
    promotion_code: str | None = None
