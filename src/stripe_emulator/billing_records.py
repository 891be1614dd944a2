"""Records of the billing cycle: payment methods, invoices, test clocks, and its settings.

Immutable like the records in records.py (an event keeps the record it was emitted with as its
`data.object`), rendered by invoice_objects.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

from stripe_emulator import tiers
from stripe_emulator.records import DAY, Discount, Metadata, Price


@dataclass(frozen=True, slots=True)
class PaymentMethod:
    """A card, made from one of Stripe's test tokens (`pm_card_visa`, ...).

    `fails`: every charge on it is declined (`pm_card_chargeCustomerFail`: it attaches to a
    customer fine, then each payment fails with `card_declined`)."""

    id: str
    created: int
    brand: str
    last4: str
    fails: bool = False
    customer: str | None = None
    metadata: Metadata = field(default_factory=dict)


def unit_amount(price: Price) -> Decimal:
    """The price per unit in cents, with any fractions of a cent (`unit_amount_decimal`)."""
    return Decimal(price.unit_amount_decimal or price.unit_amount or 0)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One line of an invoice. A licensed item bills `quantity` in advance; a metered item
    (`price.meter` set) bills `usage`, the meter's aggregated value over the ending period,
    in arrears (`quantity` is then that usage truncated, as Stripe's integer field is)."""

    id: str
    price: Price
    quantity: int
    period_start: int
    period_end: int
    subscription_item: str | None
    usage: Decimal | None = None
    # A proration (prorations.py): the signed share of the period it bills (negative: the
    # credit for unused time), and the id of its pending invoice item (`ii_...`).
    proration: Decimal | None = None
    invoice_item: str | None = None

    @property
    def quantity_decimal(self) -> Decimal:
        return Decimal(self.quantity) if self.usage is None else self.usage

    @property
    def amount(self) -> int:
        """Price x quantity, rounded half up to the nearest cent of the line's total (as
        Stripe rounds an amount with fractions of a cent)."""
        if self.price.billing_scheme == "tiered":
            exact = tiers.amount(self.price, self.quantity_decimal)
        else:
            exact = unit_amount(self.price) * transformed(self.price, self.quantity_decimal)
        if self.proration is not None:
            exact *= self.proration
        return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def transformed(price: Price, quantity: Decimal) -> Decimal:
    """The quantity a price bills: divided and rounded first with `transform_quantity`."""
    if price.transform_quantity is None:
        return quantity
    divide_by, rounding = price.transform_quantity
    whole = ROUND_CEILING if rounding == "up" else ROUND_FLOOR
    return (quantity / divide_by).quantize(Decimal(1), rounding=whole)


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    created: int
    customer: str
    subscription: str | None
    currency: str
    lines: tuple[InvoiceLine, ...]
    period_start: int
    period_end: int
    billing_reason: str
    hosted_invoice_url: str
    number: str
    status: str = "draft"
    amount_paid: int = 0
    attempt_count: int = 0
    attempted: bool = False
    next_payment_attempt: int | None = None
    # A draft's scheduled finalization (a renewal's: an hour after it is created).
    automatically_finalizes_at: int | None = None
    finalized_at: int | None = None
    paid_at: int | None = None
    voided_at: int | None = None
    marked_uncollectible_at: int | None = None
    # When a failed automatic payment first happened (the retry schedule counts from here).
    first_failed_at: int | None = None
    # False once automatic collection stops (its subscription was canceled): a draft is no
    # longer finalized on its own, an open invoice no longer retried.
    auto_advance: bool = True
    test_clock: str | None = None
    metadata: Metadata = field(default_factory=dict)
    # The subscription's discounts that applied as it was created (invoice-level discounts).
    discounts: tuple[Discount, ...] = ()

    @property
    def subtotal(self) -> int:
        """The lines' sum: below zero for a proration credit larger than its charges."""
        return sum(line.amount for line in self.lines)

    def line_discounts(self) -> list[list[int]]:
        """Per line, what each of the invoice's discounts takes off it (`discount_amounts`)."""
        return discount_amounts([line.amount for line in self.lines], self.discounts)

    @property
    def total(self) -> int:
        """The subtotal less the discounts (`total_discount_amounts`)."""
        return self.subtotal - sum(sum(taken) for taken in self.line_discounts())

    @property
    def amount_due(self) -> int:
        """Nothing is due on a negative total (Stripe credits it to the customer's balance,
        which the emulator does not model)."""
        return max(self.total, 0)

    @property
    def amount_remaining(self) -> int:
        return 0 if self.status in ("paid", "void") else self.amount_due - self.amount_paid


def discount_amounts(amounts: list[int], discounts: tuple[Discount, ...]) -> list[list[int]]:
    """What each discount takes off each line, in the discounts' order, each from what the
    ones before left. As Stripe's coupon says, `percent_off` "will be taken off the subtotal"
    and `amount_off` is taken off it (at most what is left), spread over the lines in
    proportion to their amounts (a remainder cent by cent, first line first). Only charges
    are discounted: a credit line (a proration's unused time) keeps its amount."""
    left = [max(amount, 0) for amount in amounts]
    taken: list[list[int]] = [[] for _ in amounts]
    for discount in discounts:
        coupon = discount.coupon
        if coupon.percent_off is not None:
            share = Decimal(str(coupon.percent_off)) / 100
            off = [int((a * share).quantize(Decimal(1), rounding=ROUND_HALF_UP)) for a in left]
        else:
            base = sum(left)
            budget = min(coupon.amount_off or 0, base)
            off = [budget * a // base if base else 0 for a in left]
            rest = budget - sum(off)  # under a cent a line was rounded down
            for index, amount in enumerate(left):
                if rest and amount > off[index]:
                    off[index], rest = off[index] + 1, rest - 1
        for index, amount in enumerate(off):
            taken[index].append(amount)
            left[index] -= amount
    return taken


@dataclass(frozen=True, slots=True)
class TestClock:
    id: str
    created: int
    frozen_time: int
    name: str | None = None
    status: str = "ready"
    deleted: bool = False

    __test__ = False  # not a pytest class

    @property
    def deletes_after(self) -> int:
        return self.created + 30 * DAY


@dataclass
class BillingSettings:
    """What Stripe's dashboard settings decide about failed payments (`/_emulator/billing`).

    `retry_days`: the automatic retries, each so many days after the previous attempt.
    `after_retries`: what happens to the subscription when the last retry fails: `cancel`
    (status `canceled`, `cancellation_details.reason` `payment_failed`) or `unpaid`."""

    retry_days: tuple[int, ...] = (3, 5, 7)
    after_retries: str = "cancel"
