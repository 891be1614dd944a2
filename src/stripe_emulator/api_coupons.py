"""`/v1/coupons` and `/v1/promotion_codes`, and a promotion code applied at Checkout.

Enough for `allow_promotion_codes=true`: a coupon (percent or amount off), a customer-facing
code for it, and the customer entering the code at Checkout (the completion control route's
`promotion_code`), which discounts the session's total and becomes the subscription's
discount (discounts.py: redeemed there, on its invoices while it lasts). Coupons are
updated (`name`, `metadata`), deleted (gone from the API; what was redeemed keeps it) and
listed, with Stripe's `coupon.created`, `.updated` (with `previous_attributes`) and `.deleted`
(the coupon as it was), and `promotion_code.created`.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import ids
from stripe_emulator.api import Call, created_range, list_args, list_table, route
from stripe_emulator.diff import previous_attributes
from stripe_emulator.errors import bad_request, invalid
from stripe_emulator.forms import Params, apply_metadata
from stripe_emulator.objects import Json, checkout_amount
from stripe_emulator.records import CheckoutSession, Coupon, PromotionCode, evolve
from stripe_emulator.store import Store


def coupon_json(record: Coupon) -> Json:
    return {
        "id": record.id,
        "object": "coupon",
        "amount_off": record.amount_off,
        "created": record.created,
        "currency": record.currency,
        "duration": record.duration,
        "duration_in_months": record.duration_in_months,
        "livemode": False,
        "max_redemptions": record.max_redemptions,
        "metadata": dict(record.metadata),
        "name": record.name,
        "percent_off": record.percent_off,
        "redeem_by": record.redeem_by,
        "times_redeemed": record.times_redeemed,
        "valid": record.max_redemptions is None or record.times_redeemed < record.max_redemptions,
    }


def promotion_code_json(record: PromotionCode) -> Json:
    return {
        "id": record.id,
        "object": "promotion_code",
        "active": record.active,
        "code": record.code,
        "created": record.created,
        "customer": record.customer,
        "customer_account": None,
        "expires_at": record.expires_at,
        "livemode": False,
        "max_redemptions": record.max_redemptions,
        "metadata": dict(record.metadata),
        "promotion": {"coupon": record.coupon, "type": "coupon"},
        "restrictions": {
            "first_time_transaction": False,
            "minimum_amount": None,
            "minimum_amount_currency": None,
        },
        "times_redeemed": record.times_redeemed,
    }


def _percent(p: Params) -> float | None:
    raw = p.raw("percent_off")
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise invalid("percent_off", "Invalid decimal: percent_off") from None
    if not 0 < value <= 100:
        raise invalid("percent_off", "percent_off must be greater than 0 and at most 100.")
    return value


@route("POST", "/v1/coupons")
def create_coupon(call: Call) -> Json:
    p = call.params
    percent, amount = _percent(p), p.integer("amount_off", minimum=1)
    if (percent is None) == (amount is None):
        raise bad_request("You must specify exactly one of `percent_off` or `amount_off`.")
    currency = p.string("currency")
    if amount is not None and not currency:
        raise bad_request("You must specify `currency` with `amount_off`.", "currency")
    duration = p.string("duration", choices=("forever", "once", "repeating")) or "once"
    months = p.integer("duration_in_months", minimum=1)
    if (duration == "repeating") != (months is not None):
        raise bad_request("`duration_in_months` goes with `duration=repeating`, and only there.")
    p.ignore("applies_to", "currency_options")
    record = Coupon(
        id=p.string("id") or ids.random_part(8),
        created=call.store.now(),
        duration=duration,
        percent_off=percent,
        amount_off=amount,
        currency=currency.lower() if currency else None,
        duration_in_months=months,
        name=p.string("name", max_length=40),
        max_redemptions=p.integer("max_redemptions", minimum=1),
        redeem_by=p.integer("redeem_by"),
        metadata=apply_metadata({}, p.metadata()),
    )
    p.finish()
    if record.id in call.store.coupons.rows:
        raise bad_request(f"Coupon already exists: '{record.id}'", "id")
    call.store.coupons.add(record.id, record)
    call.store.emit("coupon.created", coupon_json(record))
    return coupon_json(record)


@route("GET", "/v1/coupons/{id}")
def retrieve_coupon(call: Call) -> Json:
    call.params.finish()
    return coupon_json(call.store.coupons.get(call.id))


@route("POST", "/v1/coupons/{id}")
def update_coupon(call: Call) -> Json:
    """Stripe changes only a coupon's name and metadata: what it takes off never changes."""
    p = call.params
    old = call.store.coupons.get(call.id)
    name, metadata = p.string("name", max_length=40), p.metadata()
    p.ignore("currency_options")
    p.finish()
    new = evolve(
        old,
        name=old.name if name is None else (name or None),
        metadata=apply_metadata(dict(old.metadata), metadata),
    )
    call.store.coupons.put(new.id, new)
    before, after = coupon_json(old), coupon_json(new)
    if before != after:
        call.store.emit("coupon.updated", after, previous_attributes(before, after))
    return after


@route("DELETE", "/v1/coupons/{id}")
def delete_coupon(call: Call) -> Json:
    """New customers can no longer redeem it; the discounts made from it stay as they are
    (Stripe: deleting a coupon "does not affect any customers who have already applied" it)."""
    call.params.finish()
    coupon = call.store.coupons.get(call.id)
    call.store.coupons.gone.add(coupon.id)
    call.store.emit("coupon.deleted", coupon_json(coupon))
    return {"id": coupon.id, "object": "coupon", "deleted": True}


@route("GET", "/v1/coupons")
def list_coupons(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    gte, lt = created_range(p)
    p.finish()

    def keep(record: Coupon) -> bool:
        return (gte is None or record.created >= gte) and (lt is None or record.created < lt)

    return list_table(call.store.coupons, args, "/v1/coupons", coupon_json, keep)


@route("POST", "/v1/promotion_codes")
def create_promotion_code(call: Call) -> Json:
    p = call.params
    promotion = p.hash("promotion", required=True)
    assert promotion is not None
    promotion.string("type", required=True, choices=("coupon",))
    coupon = call.store.coupons.get(promotion.string("coupon", required=True) or "", "coupon")
    code = p.string("code", max_length=500) or ids.random_part(8).upper()
    if any(c.code.lower() == code.lower() and c.active for c in _codes(call.store)):
        raise bad_request(f"An active promotion code with `code: {code}` already exists.", "code")
    p.ignore("restrictions", "customer_account")
    record = PromotionCode(
        id=ids.new_id("promo"),
        created=call.store.now(),
        code=code,
        coupon=coupon.id,
        active=p.boolean("active") is not False,
        customer=p.string("customer"),
        expires_at=p.integer("expires_at"),
        max_redemptions=p.integer("max_redemptions", minimum=1),
        metadata=apply_metadata({}, p.metadata()),
    )
    p.finish()
    call.store.promotion_codes.add(record.id, record)
    call.store.emit("promotion_code.created", promotion_code_json(record))
    return promotion_code_json(record)


@route("GET", "/v1/promotion_codes/{id}")
def retrieve_promotion_code(call: Call) -> Json:
    call.params.finish()
    return promotion_code_json(call.store.promotion_codes.get(call.id))


@route("GET", "/v1/promotion_codes")
def list_promotion_codes(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    code, active, coupon = p.string("code"), p.boolean("active"), p.string("coupon")
    p.ignore("created", "customer", "customer_account")
    p.finish()

    def keep(record: PromotionCode) -> bool:
        return (
            (code is None or record.code.lower() == code.lower())
            and (active is None or record.active == active)
            and (coupon is None or record.coupon == coupon)
        )

    table = call.store.promotion_codes
    return list_table(table, args, "/v1/promotion_codes", promotion_code_json, keep)


def _codes(store: Store) -> list[PromotionCode]:
    return list(store.promotion_codes.rows.values())


def apply_promotion_code(store: Store, session: CheckoutSession, code: str) -> CheckoutSession:
    """The customer enters `code` at Checkout: the session's total is discounted (the
    subscription made from it redeems the code: `discounts.redeem`)."""
    if not session.allow_promotion_codes:
        raise bad_request("This Checkout Session does not accept promotion codes.", "code")
    now = store.now()
    found = [c for c in _codes(store) if c.code.lower() == code.lower() and c.active]
    promo = found[0] if found else None
    if promo is None or (promo.expires_at is not None and promo.expires_at <= now):
        raise bad_request(f"The promotion code {code!r} is not valid.", "code")
    coupon = store.coupons.get(promo.coupon)
    subtotal = checkout_amount(session)
    off = _discount(coupon, subtotal, session)
    return evolve(session, promotion_code=promo.id, amount_discount=off)


def _discount(coupon: Coupon, subtotal: int, session: CheckoutSession) -> int:
    if coupon.percent_off is not None:
        return round(subtotal * coupon.percent_off / 100)
    currency: Any = session.line_items[0].price.currency if session.line_items else None
    if coupon.currency != currency:
        raise bad_request("The coupon's currency does not match the session's.", "code")
    return min(subtotal, coupon.amount_off or 0)
