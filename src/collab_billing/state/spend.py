"""Usage this period, its estimated cost, and the user's spend cap.

The period is the user's active subscription's current period (so it rolls over with the
renewal), else the calendar month (UTC), from when the user's last subscription ended if that
is later (the usage until then was billed by it, or free in its trial). A meter's total
follows its aggregation formula (`sum`, `count`, `last`) over the records accepted in the
period (not those Stripe refused).
The cost is estimated from the metered price of the user's subscription's item that bills the
meter, for the usage since that item was added (Stripe bills an item added within a period
from then on); usage that no subscription bills costs nothing (Stripe invoices only a subscription's
metered items), so it counts 0 towards the cap. Per-unit amounts, with fractions of a cent
(`unit_amount_decimal`), in packages (`transform_quantity`: the total divided and rounded up or
down before it is priced), and tiered ones (`graduated`: each tier's units at its unit amount,
plus the flat amount of each tier reached; `volume`: every unit at the unit amount of the tier
the total falls in, plus its flat amount; a total of 0 reaches no tier), the exact amount
rounded once, half up to the cent, as Stripe (and the emulator) round an invoice line. A tiered
price mirrored without its tiers has no estimate (None). During a trial usage costs nothing.
The discounts of the invoice that bills the period's usage, made as it ends (the
subscription's own that still last then, else its customer's: `invoice_discounts`), are taken
off each meter's cost as Stripe takes them off the usage line: a coupon's `percent_off` of the
line, rounded half up to the cent (`discounted`).

Reads only, below the services (the state document reports `over_spend_cap`); the cap is
written by `billing.usage.set_cap`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from collab_billing.db import queries
from collab_billing.db.models import (
    BillingCoupon,
    BillingDiscount,
    BillingMeter,
    BillingPreference,
    BillingPrice,
    BillingSubscription,
    BillingUsageEvent,
)


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    source: str  # "subscription" or "calendar_month"


@dataclass(frozen=True)
class MeterUsage:
    meter: str
    stripe_meter_id: str
    aggregation: str
    total: Decimal
    stripe_price_id: str | None
    currency: str | None
    estimated_cost_cents: int | None


@dataclass(frozen=True)
class Spend:
    period: Period
    meters: list[MeterUsage]
    max_monthly_spend_cents: int | None

    @property
    def estimated_cost_cents(self) -> int:
        return sum(m.estimated_cost_cents or 0 for m in self.meters)

    @property
    def over_spend_cap(self) -> bool:
        cap = self.max_monthly_spend_cents
        return cap is not None and self.estimated_cost_cents > cap


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def calendar_month(now: datetime) -> Period:
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Period(start, end, "calendar_month")


def _subscription(
    session: Session, subscriptions: Sequence[BillingSubscription]
) -> BillingSubscription | None:
    """The user's active subscription with a known period whose usage is estimated: the newest
    that bills usage (an item of a metered price), else the newest."""
    active = [
        s
        for s in subscriptions
        if s.stripe_subscription_status in queries.ACTIVE_STATUSES
        and s.stripe_current_period_start is not None
        and s.stripe_current_period_end is not None
    ]
    if len(active) > 1:
        metered = set(
            session.scalars(
                select(BillingPrice.stripe_price_id).where(
                    BillingPrice.stripe_price_id.in_({p for s in active for p in _items(s)}),
                    BillingPrice.stripe_meter_id.is_not(None),
                )
            )
        )
        active = [s for s in active if metered.intersection(_items(s))] or active
    return active[-1] if active else None


def _items(subscription: BillingSubscription) -> list[str]:
    """The prices of the subscription's items (its plan's, if mirrored before its items were)."""
    return subscription.stripe_item_price_ids or [subscription.stripe_price_id or ""]


def current_period(
    session: Session, subscriptions: Sequence[BillingSubscription], now: datetime
) -> tuple[Period, BillingSubscription | None]:
    """The active subscription's period, else the calendar month from when the user's last
    subscription ended, if later: usage until then was billed by it (or free in its trial)."""
    subscription = _subscription(session, subscriptions)
    if subscription is None:
        month = calendar_month(now)
        ended = [_utc(s.stripe_ended_at) for s in subscriptions if s.stripe_ended_at is not None]
        start = max([month.start, *ended])
        return Period(start, month.end, "calendar_month"), None
    assert subscription.stripe_current_period_start and subscription.stripe_current_period_end
    period = Period(
        _utc(subscription.stripe_current_period_start),
        _utc(subscription.stripe_current_period_end),
        "subscription",
    )
    return period, subscription


def _total(session: Session, user_id: int, meter: BillingMeter, period: Period) -> Decimal:
    usage = BillingUsageEvent
    where = (
        usage.user_id == user_id,
        usage.meter_event_name == meter.event_name,
        usage.status != "failed",
        usage.timestamp >= int(period.start.timestamp()),
        usage.timestamp < int(period.end.timestamp()),
    )
    if meter.aggregation_formula == "count":
        return Decimal(session.scalar(select(func.count()).where(*where)) or 0)
    if meter.aggregation_formula == "last":
        last = session.scalar(
            select(usage.value).where(*where).order_by(usage.timestamp.desc(), usage.id.desc())
        )
        return Decimal(last or 0)
    if session.get_bind().dialect.name == "sqlite":
        # SQLite's SUM() turns the values, kept as text to be exact, into doubles: 0.1 + 0.2
        # was 0.30000000000000004, and a tier's edge could be missed. Summed here, exactly.
        return sum(session.scalars(select(usage.value).where(*where)), Decimal(0))
    return Decimal(str(session.scalar(select(func.sum(usage.value)).where(*where)) or 0))


def _billed_total(
    session: Session,
    user_id: int,
    meter: BillingMeter,
    period: Period,
    subscription: BillingSubscription | None,
    price: BillingPrice | None,
    total: Decimal,
) -> Decimal:
    """The part of the period's usage that the subscription's item bills: Stripe bills a
    metered item added within the period for the usage from then on."""
    if subscription is None or price is None or not subscription.stripe_item_created:
        return total
    added = subscription.stripe_item_created.get(price.stripe_price_id)
    if added is None or added <= period.start.timestamp():
        return total
    since = Period(datetime.fromtimestamp(added, UTC), period.end, period.source)
    return _total(session, user_id, meter, since)


def _price(
    session: Session, subscription: BillingSubscription | None, meter_id: str
) -> BillingPrice | None:
    """The price the meter's usage is billed at: the subscription's item that bills it (None:
    no item does, and the usage is not billed)."""
    if subscription is None:
        return None
    return session.scalar(
        select(BillingPrice).where(
            BillingPrice.stripe_price_id.in_(_items(subscription)),
            BillingPrice.stripe_meter_id == meter_id,
        )
    )


def _cents(text: str | None) -> Decimal:
    return Decimal(text) if text is not None else Decimal(0)


def tiered_cost(mode: str | None, tiers: list[dict[str, Any]], total: Decimal) -> Decimal:
    """The exact cost in cents of `total` units of a tiered price (see the module's doc)."""
    if total <= 0 or not tiers:
        return Decimal(0)
    if mode == "volume":
        tier = next((t for t in tiers if t["up_to"] is None or total <= t["up_to"]), tiers[-1])
        return _cents(tier["unit_amount_decimal"]) * total + _cents(tier["flat_amount_decimal"])
    cost, floor = Decimal(0), Decimal(0)
    for tier in tiers:
        up_to = tier["up_to"]
        top = total if up_to is None else min(total, Decimal(up_to))
        cost += _cents(tier["unit_amount_decimal"]) * (top - floor)
        cost += _cents(tier["flat_amount_decimal"])
        if up_to is None or total <= up_to:
            break
        floor = Decimal(up_to)
    return cost


def cost_cents(price: BillingPrice, total: Decimal) -> int | None:
    """The cost in whole cents (rounded half up, as Stripe rounds a line's amount)."""
    if price.billing_scheme == "tiered":
        if price.tiers is None:
            return None
        exact = tiered_cost(price.tiers_mode, price.tiers, total)
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if price.unit_amount_decimal is not None:
        unit = Decimal(price.unit_amount_decimal)
    elif price.unit_amount is not None:
        unit = Decimal(price.unit_amount)
    else:
        return None
    if price.transform_divide_by:  # package pricing: whole packages, rounded as Stripe does
        whole = ROUND_CEILING if price.transform_round == "up" else ROUND_FLOOR
        total = (total / price.transform_divide_by).quantize(Decimal(1), rounding=whole)
    return int((unit * total).quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class Discount:
    """A discount of the subscription or its customer, as the usage estimate takes it off."""

    percent_off: float | None  # None: an `amount_off` coupon, or one not mirrored yet
    end: datetime | None  # a `repeating` coupon's; None: `once` (deleted once used), `forever`

    def lasts(self, period: Period) -> bool:
        """Whether it still applies to the invoice made as `period` ends."""
        return self.end is None or self.end > period.end


def _discounts(session: Session, *where: Any, newest: bool = False) -> list[Discount]:
    """The discounts `where` picks with their coupons' terms (a coupon deleted since keeps
    them; one not mirrored yet takes nothing off: the estimate stays on the side of the cap),
    oldest first (`newest`: the newest alone, and none if it was deleted)."""
    start, key = BillingDiscount.stripe_start, BillingDiscount.stripe_discount_id
    statement = (
        select(BillingCoupon.percent_off, BillingDiscount.stripe_end, BillingDiscount.deleted)
        .select_from(BillingDiscount)
        .outerjoin(
            BillingCoupon, BillingCoupon.stripe_coupon_id == BillingDiscount.stripe_coupon_id
        )
        .where(*where)
    )
    if newest:
        statement = statement.order_by(start.desc().nulls_last(), key.desc()).limit(1)
    else:
        statement = statement.where(BillingDiscount.deleted.is_(False)).order_by(start, key)
    return [
        Discount(percent, _utc(end) if end else None)
        for percent, end, deleted in session.execute(statement)
        if not deleted
    ]


def subscription_discounts(session: Session, subscription_id: str) -> list[Discount]:
    """The discounts on the whole subscription now (not one of its items'), oldest first."""
    return _discounts(
        session,
        BillingDiscount.stripe_subscription_id == subscription_id,
        BillingDiscount.stripe_subscription_item_id.is_(None),
    )


def invoice_discounts(
    session: Session, subscription: BillingSubscription, period: Period
) -> list[Discount]:
    """The discounts of the invoice that bills the period's usage, made as it ends: the
    subscription's own (on the whole of it, not one of its items') that last until then, else
    its customer's own discount (`customer.discount`, with no subscription), if it lasts. A
    customer's coupon "applies to all subscriptions for that customer, including
    subscriptions added later" (https://docs.stripe.com/billing/subscriptions/coupons), and a
    subscription without discounts "inherits the discount from the subscription's customer"
    (Stripe's API reference, a subscription's `discounts`). Stripe shows a customer one
    discount at a time: of its discounts, the newest decides (a row of an older one whose
    deletion was never seen does not count)."""
    own = subscription_discounts(session, subscription.stripe_subscription_id)
    lasting = [d for d in own if d.lasts(period)]
    if lasting:
        return lasting
    customers = _discounts(
        session,
        BillingDiscount.billing_customer_id == subscription.billing_customer_id,
        BillingDiscount.stripe_subscription_id.is_(None),
        BillingDiscount.stripe_subscription_item_id.is_(None),
        newest=True,
    )
    return [d for d in customers if d.lasts(period)]


def discounted(cents: int, discounts: Sequence[Discount], period: Period) -> int:
    """A usage line's amount less the discounts that apply to the invoice billing it, made as
    `period` ends (`invoice_discounts`). Stripe takes them off every line of each invoice
    made while they last (a coupon's `percent_off` "will be taken off the subtotal of any
    invoices"; `duration`: `once` the next invoice, `repeating` until the discount's `end`,
    `forever`), metered usage lines too, each discount from what the ones before left. An
    `amount_off` coupon is spread over all the invoice's lines, the plan's included: not taken
    off here (the estimate stays on the side of the cap)."""
    for discount in discounts:
        percent = discount.percent_off
        if percent is None or not discount.lasts(period):
            continue
        off = (Decimal(cents) * Decimal(str(percent)) / 100).quantize(Decimal(1), ROUND_HALF_UP)
        cents -= int(off)
    return cents


def user_spend(session: Session, user_id: int, now: datetime | None = None) -> Spend:
    subscriptions = queries.list_subscriptions_of_user(session, user_id)
    period, subscription = current_period(session, subscriptions, now or datetime.now(UTC))
    meters = session.scalars(
        select(BillingMeter)
        .where(BillingMeter.status == "active")
        .order_by(BillingMeter.event_name)
    ).all()
    # A trial's usage is invoiced at nothing (by Stripe and the emulator): it costs nothing.
    free = subscription is not None and subscription.stripe_subscription_status == "trialing"
    discounts = invoice_discounts(session, subscription, period) if subscription else []
    usages = []
    for meter in meters:
        total = _total(session, user_id, meter, period)
        price = _price(session, subscription, meter.stripe_meter_id)
        billed = _billed_total(session, user_id, meter, period, subscription, price, total)
        cost = cost_cents(price, Decimal(0) if free else billed) if price is not None else 0
        usages.append(
            MeterUsage(
                meter=meter.event_name,
                stripe_meter_id=meter.stripe_meter_id,
                aggregation=meter.aggregation_formula,
                total=total,
                stripe_price_id=price.stripe_price_id if price else None,
                currency=price.currency if price else None,
                estimated_cost_cents=None if cost is None else discounted(cost, discounts, period),
            )
        )
    return Spend(period, usages, get_cap(session, user_id))


def get_cap(session: Session, user_id: int) -> int | None:
    """The user's monthly spend cap in cents; None: no cap."""
    return session.scalar(
        select(BillingPreference.max_monthly_spend_cents).where(
            BillingPreference.user_id == user_id
        )
    )
