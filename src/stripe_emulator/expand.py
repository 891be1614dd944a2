"""`expand[]`: replace object ids in a response by the objects, along dotted paths.

Paths work as on Stripe: `customer`, `subscription`, `items.data.price.product`, and on lists
`data.customer`. Only fields holding an id of a kind the emulator stores can be expanded.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import objects, tiers
from stripe_emulator.discount_objects import discount_json
from stripe_emulator.errors import bad_request
from stripe_emulator.store import Store

MAX_DEPTH = 4


def resolve(store: Store, object_id: str, key: str = "") -> objects.Json | None:
    from stripe_emulator.api_coupons import coupon_json, promotion_code_json  # imports api

    if key == "coupon" and object_id in store.coupons.rows:  # a coupon's id is any text
        return coupon_json(store.coupons.rows[object_id])
    if object_id.startswith("promo_") and object_id in store.promotion_codes.rows:
        return promotion_code_json(store.promotion_codes.rows[object_id])
    if object_id.startswith("di_") and object_id in store.discounts:
        return discount_json(store.discounts[object_id])
    if object_id.startswith("cus_") and object_id in store.customers.rows:
        return objects.customer(store.customers.rows[object_id])
    if object_id.startswith("sub_") and object_id in store.subscriptions.rows:
        return objects.subscription(store.subscriptions.rows[object_id])
    if object_id.startswith("price_") and object_id in store.prices.rows:
        return objects.price(store.prices.rows[object_id])
    if object_id.startswith("prod_") and object_id in store.products.rows:
        return objects.product(store.products.rows[object_id])
    if object_id.startswith("cs_") and object_id in store.checkout_sessions.rows:
        return objects.checkout_session(store.checkout_sessions.rows[object_id])
    return None


def _include(store: Store, node: objects.Json, key: str) -> bool:
    """Fields Stripe leaves out unless expanded (includable): a price's `tiers`, present on
    tiered prices only. Returns whether `key` is one (added to `node` when it applies)."""
    if node.get("object") != "price" or key != "tiers":
        return False
    record = store.prices.rows.get(node.get("id", ""))
    if record is not None and record.billing_scheme == "tiered":
        node["tiers"] = tiers.render(record)
    return True


def expand(store: Store, body: objects.Json, paths: list[Any]) -> objects.Json:
    for path in paths:
        if not isinstance(path, str) or not path:
            raise bad_request("Invalid expand: must be a list of strings", "expand")
        segments = path.split(".")
        if len(segments) > MAX_DEPTH:
            raise bad_request(
                f"You cannot expand more than {MAX_DEPTH} levels of a property. Property: {path}",
                "expand",
            )
        _expand(store, body, segments, path)
    return body


def _expand(store: Store, node: Any, segments: list[str], path: str) -> None:
    if isinstance(node, list):
        for item in node:
            _expand(store, item, segments, path)
        return
    if not isinstance(node, dict):
        return
    key = segments[0]
    if key not in node and len(segments) == 1 and _include(store, node, key):
        return
    if key not in node:
        raise bad_request(f"This property cannot be expanded ({path}).", "expand")
    value = node[key]
    if isinstance(value, list) and any(isinstance(v, str) for v in value):
        # A list of ids (a subscription's or an invoice's `discounts`): each expanded.
        node[key] = value = [_resolved(store, v, key, path) for v in value]
    elif isinstance(value, str):
        node[key] = value = _resolved(store, value, key, path)
    elif len(segments) == 1 and value is not None and not isinstance(value, (dict, list)):
        raise bad_request(f"This property cannot be expanded ({path}).", "expand")
    if len(segments) > 1:
        _expand(store, value, segments[1:], path)


def _resolved(store: Store, value: Any, key: str, path: str) -> Any:
    if not isinstance(value, str):
        return value
    expanded = resolve(store, value, key)
    if expanded is None:
        raise bad_request(f"This property cannot be expanded ({path}).", "expand")
    return expanded
