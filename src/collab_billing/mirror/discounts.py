"""Discounts: `billing_discounts`, the coupons applied to our customers' subscriptions.

Stripe tells of a discount with `customer.discount.created`, `.updated` and `.deleted`, whose
object is the discount (`source.coupon` an id, `customer`, `subscription`, `start`, `end`):
it is written from that payload, and its coupon's terms are the coupon's row
(`mirror.coupons`). A subscription's own events name its discounts by id only; they are not
needed: the usage estimate (`state.spend`) takes a subscription's discounts from these rows.
Stripe deletes a discount that was removed or ended (a `once` coupon's after the invoice that
used it, a `repeating` one's at its `end`): `customer.discount.deleted` writes a tombstone.

Stripe cannot retrieve a discount by id, nor list them. A same-second tie that only a read
settles reads the subscription that shows it (`expand[]=discounts`; the customer's `discount`
for one applied to the customer), and a discount it no longer shows was deleted. Resync lists
them from the subscriptions (`expand[]=data.discounts`) and the customers (whose own
`discount`, with no `subscription`, Stripe applies to their subscriptions that have none:
`state.spend.invoice_discounts`); one of a subscription's items is not listed (the estimate
does not use it). These reads expand each discount's coupon too, and a coupon no row has is
written from it (`keep_their_coupons`): Stripe's list of coupons leaves out deleted ones.
Those lists show every live discount (not of an item), so one that a resync's lists do not
show was removed while its `customer.discount.deleted` went unread (past Stripe's 30 days of
events): resync tombstones it (`listed_rows`). A sync on return reads its user's
subscriptions so, and marks deleted the discounts of those subscriptions that its read no
longer shows (`unshown`), so that a removed one stops counting at once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any

import msgspec
from sqlalchemy.orm import Session

from collab_billing.db.dialect import insert
from collab_billing.db.models import BillingCoupon, BillingDiscount
from collab_billing.mirror.coupons import COUPONS, Coupon
from collab_billing.mirror.types import MirroredType, stripe_time
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.events import Ref, id_of


class DiscountSource(msgspec.Struct):
    # An id in events; the coupon itself where a read expands it (resync, a tie's read).
    coupon: str | Coupon | None = None


class Discount(msgspec.Struct):
    """The fields of a Stripe discount that the service keeps."""

    id: str
    customer: str | Ref
    source: DiscountSource = msgspec.field(default_factory=DiscountSource)
    subscription: str | None = None
    subscription_item: str | None = None
    start: int | None = None
    end: int | None = None
    deleted: bool = False


class _Item(msgspec.Struct):
    discounts: list[str | Discount] = []


class _Items(msgspec.Struct):
    data: list[_Item] = []


class _Shows(msgspec.Struct):
    """A subscription (or a customer) as read to find its discounts."""

    customer: str | Ref | None = None
    discounts: list[str | Discount] = []
    items: _Items = msgspec.field(default_factory=_Items)
    discount: Discount | None = None  # a customer's own
    deleted: bool = False

    def shown(self) -> list[Discount]:
        found = [*self.discounts, *(d for item in self.items.data for d in item.discounts)]
        if self.discount is not None:
            found.append(self.discount)
        return [d for d in found if isinstance(d, Discount)]


def columns(discount: Discount) -> dict[str, Any]:
    coupon = discount.source.coupon
    return {
        "stripe_coupon_id": coupon if isinstance(coupon, str | None) else coupon.id,
        "stripe_subscription_id": discount.subscription,
        "stripe_subscription_item_id": discount.subscription_item,
        "stripe_start": stripe_time(discount.start),
        "stripe_end": stripe_time(discount.end),
        "deleted": discount.deleted,
    }


# A subscription's discounts, each with its coupon (for a list: `data.` first, four levels,
# Stripe's most: `LISTED_WITH`, the expansion of a list of subscriptions that shows them).
_COUPONS = "discounts.source.coupon"
LISTED_WITH = (f"data.{_COUPONS}",)


def shown_by(discount: Discount) -> str:
    """The object whose read shows the discount: its subscription, else its customer."""
    if discount.subscription:
        return f"subscription:{discount.subscription}"
    return f"customer:{id_of(discount.customer)}"


def retrieve(gateway: StripeGateway, discount_id: str, via: str) -> Discount:
    """The discount as the object that shows it (`shown_by`) shows it now; deleted when that
    object no longer shows it (or is gone)."""
    kind, _, parent = via.partition(":")
    if kind == "subscription":
        path, expand = f"/v1/subscriptions/{parent}", [_COUPONS, "items.data.discounts"]
    else:
        path, expand = f"/v1/customers/{parent}", ["discount.source.coupon"]
    try:
        shows = msgspec.json.decode(
            gateway.get("discounts.retrieve", path, expand=expand), type=_Shows
        )
    except StripeGatewayError as error:
        if error.http_status != 404:
            raise
        shows = _Shows(deleted=True)
    found = next((d for d in shows.shown() if d.id == discount_id), None)
    if found is not None:
        return found
    customer = parent if kind == "customer" else id_of(shows.customer or "")
    return Discount(id=discount_id, customer=customer, deleted=True)


def listed(raw: bytes | msgspec.Raw) -> Iterable[Discount]:
    """The discounts one listed subscription (`expand[]=data.discounts`) or customer shows."""
    return msgspec.json.decode(raw, type=_Shows).shown()


def customers_own(gateway: StripeGateway, params: dict[str, Any]) -> Iterator[Discount]:
    """The customers' own discounts: each listed customer's `discount` (shown in full, no
    expansion), or the one customer's that `params` names."""
    customer = params.get("customer")
    if customer is not None:
        raws: Iterable[bytes | msgspec.Raw] = [
            gateway.get(
                "customers.retrieve",
                f"/v1/customers/{customer}",
                expand=["discount.source.coupon"],
            )
        ]
    else:
        raws = gateway.list_all("/v1/customers", expand=["data.discount.source.coupon"])
    for raw in raws:
        yield from listed(raw)


def keep_their_coupons(session: Session, written: list[tuple[Discount, int | None]]) -> None:
    """The coupons that reads expanded with their discounts, where no row has them: the list
    of coupons leaves out deleted ones, whose discounts Stripe still takes off (their events,
    from before a release that mirrors coupons, were never read). A row is never replaced:
    the coupon's own events are newer than any watermark this gives it (0)."""
    coupons = {
        coupon.id: COUPONS.row(coupon, 0, None)
        for discount, _ in written
        if isinstance(coupon := discount.source.coupon, Coupon)
    }
    if coupons:
        statement = insert(session, BillingCoupon).on_conflict_do_nothing()
        session.execute(statement, list(coupons.values()))


def unshown(
    session: Session,
    billing_customer_id: int,
    subscription_ids: Collection[str],
    shown: Collection[str],
    as_of: int,
) -> list[str]:
    """The live rows of these subscriptions' own discounts (not an item's: `listed_rows`) no
    newer than second `as_of` that a read of the subscriptions with their discounts
    expanded, made after that second, did not show (`shown`): Stripe removed them. Those of
    that second are to be checked against their versions seen before the read
    (`BatchWriter.tombstone_unshown`)."""
    if not subscription_ids:
        return []
    table = DISCOUNTS.table
    statement = DISCOUNTS.unlisted(as_of, billing_customer_id, of_the_second=True).where(
        table.c.stripe_subscription_id.in_(sorted(subscription_ids))
    )
    return sorted(set(session.scalars(statement)) - set(shown))


DISCOUNTS = MirroredType(
    kind="discount",
    event_types=(
        "customer.discount.created",
        "customer.discount.updated",
        "customer.discount.deleted",
    ),
    object_type=Discount,
    table=BillingDiscount.__table__,  # type: ignore[arg-type]
    key="stripe_discount_id",
    columns=columns,
    object_id=lambda discount: discount.id,
    owner=lambda discount: id_of(discount.customer),
    retrieve_path="",
    list_path="/v1/subscriptions",
    list_params={"status": "all", "expand": list(LISTED_WITH)},
    shown_by=shown_by,
    retrieve_via=retrieve,
    listed=listed,
    also_listed=customers_own,
    after_write=keep_their_coupons,
    listed_rows=lambda table: table.c.stripe_subscription_item_id.is_(None),
)
