"""A customer's own discount: `customer.discount`, a discount with no `subscription`.

At API version 2026-08-26 a customer takes no `coupon` or `promotion_code` (`POST
/v1/customers` and `POST /v1/customers/{id}` refuse both as unknown parameters): a discount
is applied to a customer in the Dashboard, here `POST /_emulator/customers/{id}/discount`
`{"coupon"}` or `{"promotion_code"}`, and removed with `DELETE /v1/customers/{id}/discount`.
Each sends `customer.discount.created` / `.deleted`, whose object is the discount with
`subscription: null`; `GET /v1/customers/{id}` (and the list) shows it as `discount`. A
customer holds one at a time: applying another while one is there is refused here (remove it
first), rather than guess how the Dashboard switches it (Stripe's `customer.discount.updated`
"occurs whenever a customer is switched from one coupon to another").

Stripe applies it to the invoices of the customer's subscriptions that have no discount of
their own (`discounts.applying`): "A coupon that you add to a customer applies to all
subscriptions for that customer, including subscriptions added later"
(https://docs.stripe.com/billing/subscriptions/coupons), and a subscription's `discounts`,
"If not specified or empty, inherits the discount from the subscription's customer" (the
spec's `POST /v1/subscriptions`). It lasts as a subscription's does: a `once` one is removed
after the first invoice that charges something, a `repeating` one at its `end`
(`discounts.used`). One of an `amount_off` coupon sets the customer's `currency`, and holds it
(customer_currency.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from stripe_emulator import customer_currency, discounts
from stripe_emulator.api import Call, route
from stripe_emulator.control import Body, _only, _r, _store, _typed
from stripe_emulator.discount_objects import deleted_discount_json, discount_json
from stripe_emulator.errors import bad_request
from stripe_emulator.records import Discount, evolve
from stripe_emulator.store import Store


def set_discount(store: Store, customer_id: str, new: Discount | None, at: int) -> None:
    """The customer's discount becomes `new` (None: removed), with Stripe's event."""
    customer = store.customers.rows[customer_id]
    old = customer.discount
    store.customers.put(customer_id, evolve(customer, discount=new))
    if old is not None:
        store.emit("customer.discount.deleted", discount_json(old), created=at)
    if new is not None:
        store.discounts[new.id] = new
        store.emit("customer.discount.created", discount_json(new), created=at)


def apply(store: Store, customer_id: str, kind: str, value: str) -> Discount:
    """A discount on the customer itself, from a coupon or a promotion code."""
    customer = store.live_customer(customer_id, "id")
    if customer.discount is not None:
        raise bad_request(
            f"The customer {customer_id} already has a discount: remove it first.", kind
        )
    at = store.customer_now(customer_id)
    currency = _flat_rate_currency(store, kind, value)
    if currency is not None:  # refused before it is redeemed (nothing counted)
        customer_currency.check(store, customer_id, currency)
    made = discounts.redeem_for(store, kind, value, kind, customer_id, None, at)
    if currency is not None:  # a flat-rate coupon sets, and then holds, the customer's
        customer_currency.adopt(store, customer_id, currency, at)
    set_discount(store, customer_id, made, at)
    return made


def _flat_rate_currency(store: Store, kind: str, value: str) -> str | None:
    """The currency of the `amount_off` coupon named (directly, or by a promotion code);
    None for a `percent_off` one."""
    coupon_id = store.promotion_codes.get(value, kind).coupon if kind == "promotion_code" else value
    coupon = store.coupons.get(coupon_id, kind)
    return coupon.currency if coupon.amount_off is not None else None


@route("DELETE", "/v1/customers/{id}/discount")
def delete_customer_discount(call: Call) -> dict[str, Any]:
    """Stripe's "Delete a customer discount": `customer.discount.deleted`; a 404 without one."""
    call.params.finish()
    customer = call.store.live_customer(call.id, "customer")
    if customer.discount is None:
        raise discounts.none_to_delete("customer", call.id)
    removed = customer.discount
    set_discount(call.store, call.id, None, call.store.customer_now(call.id))
    return deleted_discount_json(removed)


async def apply_route(request: Request, body: Body) -> Any:
    _only(body, {"coupon", "promotion_code"})
    given = [(k, _typed(body, k, str)) for k in ("coupon", "promotion_code")]
    chosen = [(k, v) for k, v in given if v]
    if len(chosen) != 1:
        raise bad_request("Give exactly one of `coupon` or `promotion_code`.", "coupon")
    store = _store(request)
    with store.lock:
        return discount_json(apply(store, request.path_params["id"], *chosen[0]))


routes = [_r("/_emulator/customers/{id}/discount", apply_route, ["POST"])]
