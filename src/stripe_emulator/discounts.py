"""Discounts: coupons applied to subscriptions, as Stripe applies them.

A subscription's `discounts` (`[{coupon}]`, `[{promotion_code}]` or `[{discount}]` on create
and update, or a promotion code entered at Checkout) each become a `discount` (`di_...`,
`customer.discount.created`); `discounts=""` removes them (`customer.discount.deleted`), as
`DELETE /v1/subscriptions/{id}/discount` removes a subscription's one discount (`sole`), and
a populated array replaces them. Each applies to every invoice the subscription makes while it
lasts (`invoices.create_invoice`): an invoice-level discount, as Stripe's invoice shows it
(`discounts`, `total_discount_amounts`, each line's `discount_amounts`; its `subtotal` stays,
its `total` and `amount_due` drop). It applies to all the subscription's lines, metered usage
and prorations too ("taken off the subtotal of any invoices", Stripe's coupon reference).
How long (Stripe's `duration`): `forever`; `repeating` until `end`, `duration_in_months`
after the discount started (an invoice made from `end` on has none); `once`: the first
invoice with a charge (a trial's $0 invoice does not use it up). An ended discount is removed
from the subscription as that invoice is made (`customer.discount.deleted`, then
`customer.subscription.updated` without it). A subscription with no discount of its own
lasting takes its customer's instead (customer_discounts.py), used up the same way.
"""

from __future__ import annotations

from stripe_emulator import ids, objects
from stripe_emulator.discount_objects import discount_json
from stripe_emulator.errors import StripeError, bad_request
from stripe_emulator.forms import Params
from stripe_emulator.periods import add_months
from stripe_emulator.records import Coupon, Discount, Subscription, evolve
from stripe_emulator.store import Store

Json = objects.Json


def requested(p: Params) -> list[tuple[str, str, str]] | None:
    """The `discounts` parameter: (kind, id, param) per entry; [] clears them (`""`);
    None: not given (or an empty array, which leaves them as they are)."""
    if p.raw("discounts") == "":
        return []
    entries = p.dicts("discounts")
    if not entries:
        return None
    wanted = []
    for entry in entries:
        given = [(k, entry.string(k)) for k in ("coupon", "promotion_code", "discount")]
        chosen = [(k, v) for k, v in given if v]
        if len(chosen) != 1:
            raise bad_request(
                "Each discount takes exactly one of `coupon`, `promotion_code` or `discount`.",
                entry.name("coupon"),
            )
        kind, value = chosen[0]
        assert value is not None
        wanted.append((kind, value, entry.name(kind)))
    return wanted


def _redeemable(store: Store, coupon: Coupon, currency: str | None, param: str, at: int) -> Coupon:
    """`coupon`, redeemed once more; `currency`: the subscription's (None: the customer's own
    discount, which Stripe checks against each invoice instead)."""
    if coupon.max_redemptions is not None and coupon.times_redeemed >= coupon.max_redemptions:
        raise bad_request(f"Coupon {coupon.id} has been redeemed the maximum times.", param)
    if coupon.redeem_by is not None and coupon.redeem_by <= at:
        raise bad_request(f"Coupon expired: {coupon.id}", param)
    if coupon.amount_off is not None and currency is not None and coupon.currency != currency:
        raise bad_request(
            f"The coupon {coupon.id} is in {coupon.currency}; it cannot discount a "
            f"subscription in {currency}.",
            param,
        )
    redeemed = evolve(coupon, times_redeemed=coupon.times_redeemed + 1)
    store.coupons.put(coupon.id, redeemed)
    return redeemed


def redeem_for(
    store: Store,
    kind: str,
    value: str,
    param: str,
    customer: str,
    sub: Subscription | None,
    at: int,
) -> Discount:
    """A new discount of `customer` (on `sub`, or its own) from a coupon or a promotion code
    (which counts one redemption more, as its coupon does)."""
    promotion = None
    if kind == "promotion_code":
        promotion = store.promotion_codes.get(value, param)
        expired = promotion.expires_at is not None and promotion.expires_at <= at
        if not promotion.active or expired:
            raise bad_request(f"The promotion code {promotion.code!r} is not active.", param)
        store.promotion_codes.put(
            promotion.id, evolve(promotion, times_redeemed=promotion.times_redeemed + 1)
        )
        value = promotion.coupon
    currency = sub.currency if sub is not None else None
    coupon = _redeemable(store, store.coupons.get(value, param), currency, param, at)
    end = None
    if coupon.duration == "repeating" and coupon.duration_in_months:
        end = add_months(at, coupon.duration_in_months)
    return Discount(
        id=ids.new_id("di"),
        coupon=coupon,
        customer=customer,
        subscription=sub.id if sub is not None else None,
        start=at,
        end=end,
        promotion_code=promotion.id if promotion else None,
    )


def redeem(
    store: Store, wanted: list[tuple[str, str, str]], sub: Subscription, at: int
) -> tuple[Discount, ...]:
    """The discounts `wanted` for `sub` (kept ones by id, new ones redeemed: the coupon and
    promotion code count one redemption more)."""
    result = []
    for kind, value, param in wanted:
        if kind == "discount":
            kept = next((d for d in sub.discounts if d.id == value), None)
            if kept is None:
                raise bad_request(f"No such discount on this subscription: '{value}'", param)
            result.append(kept)
            continue
        result.append(redeem_for(store, kind, value, param, sub.customer, sub, at))
    return tuple(result)


def announce(store: Store, old: tuple[Discount, ...], new: tuple[Discount, ...], at: int) -> None:
    """`customer.discount.deleted` for each discount gone, `.created` for each new one."""
    kept = {d.id for d in new}
    for gone in old:
        if gone.id not in kept:
            store.emit("customer.discount.deleted", discount_json(gone), created=at)
    before = {d.id for d in old}
    for added in new:
        if added.id not in before:
            store.discounts[added.id] = added
            store.emit("customer.discount.created", discount_json(added), created=at)


def none_to_delete(kind: str, object_id: str) -> StripeError:
    """The error of `DELETE /v1/{customers,subscriptions}/{id}/discount` with nothing to
    delete: Stripe's reference says only that the call "returns an error ... such as if no
    discount exists", so a 404 `resource_missing`, as for any object not there."""
    return StripeError(404, f"No active discount for {kind}: {object_id}", code="resource_missing")


def sole(sub: Subscription) -> Discount:
    """The discount `DELETE /v1/subscriptions/{id}/discount` removes: the subscription's own
    (one its customer's only applies to is not the subscription's). Stripe's endpoint, from
    before subscriptions took several discounts, names one ("the currently applied discount"):
    with several this refuses, rather than guess which Stripe removes (`discounts=""` removes
    them all)."""
    if not sub.discounts:
        raise none_to_delete("subscription", sub.id)
    if len(sub.discounts) > 1:
        raise bad_request(
            f"The subscription {sub.id} has {len(sub.discounts)} discounts: remove them with "
            "`discounts` on `POST /v1/subscriptions/{id}` (the emulator does not guess which "
            "one this endpoint removes)."
        )
    return sub.discounts[0]


def _lasting(found: tuple[Discount, ...], at: int) -> tuple[Discount, ...]:
    return tuple(d for d in found if d.end is None or d.end > at)


def applying(store: Store, sub: Subscription, at: int) -> tuple[Discount, ...]:
    """The discounts that apply to an invoice the subscription makes at `at`: its own, else
    its customer's (`customer_discounts.py`)."""
    own = _lasting(sub.discounts, at)
    if own:
        return own
    customer = store.customers.rows.get(sub.customer)
    if customer is None or customer.discount is None:
        return ()
    return _lasting((customer.discount,), at)


def used(store: Store, sub_id: str, charged: bool, at: int) -> None:
    """After an invoice made at `at`: the discounts that ended (a `repeating` one past its
    end; a `once` one, if the invoice charged something) are removed: the subscription's,
    or the customer's when the invoice took that one (the subscription had none lasting)."""
    from stripe_emulator.customer_discounts import set_discount
    from stripe_emulator.subscriptions import save  # subscriptions imports this module

    sub = store.subscriptions.rows.get(sub_id)
    if sub is None:
        return
    if not _lasting(sub.discounts, at):
        customer = store.customers.rows.get(sub.customer)
        if customer is not None and customer.discount is not None:
            ended = not _lasting((customer.discount,), at)
            if ended or (charged and customer.discount.coupon.duration == "once"):
                set_discount(store, customer.id, None, at)
    if not sub.discounts:
        return
    left = tuple(
        d for d in _lasting(sub.discounts, at) if not (charged and d.coupon.duration == "once")
    )
    if left == sub.discounts:
        return
    announce(store, sub.discounts, left, at)
    save(store, sub, evolve(sub, discounts=left), created=at)
