"""Events encoded straight to JSON bytes, for the event list (the emulator's hot path).

`event_json(event, pending)` returns exactly `objects.dumps(objects.event(event, pending))`,
in about 60% of the time for the objects that make up bulk workloads (subscriptions and
customers). Rendering a subscription means building dicts of some sixty keys, most of them
constant; here each encoder builds one dict of only the keys that vary, and every run of
constant keys travels as one `orjson.Fragment` (already encoded JSON that orjson copies
verbatim) attached to the first key of the run: `"object": <"subscription","application":null,
...>` closes its own value and carries the following constant members. The constants are
taken from the renderers in objects.py (rendering a probe record at import), so those stay the
one definition of each shape; what an encoder must list is which keys vary, and
tests/emulator/test_encode.py checks the bytes against the renderers for varied records.

Nothing is cached per event (a million events would cost gigabytes); only each price's
encoding is kept (keyed by the record's identity: records are immutable), since every
subscription item embeds its price.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from stripe_emulator import objects
from stripe_emulator.discount_objects import discount_json
from stripe_emulator.events import Event
from stripe_emulator.records import Customer, Item, Price, Subscription

Fragment = orjson.Fragment
_dumps = orjson.dumps


def constant_runs(rendered: objects.Json, variable: Iterable[str]) -> dict[str, orjson.Fragment]:
    """For each run of keys of `rendered` not in `variable`: its first key -> a fragment holding
    that key's value followed by the run's other members (`value,"key":value,...`)."""
    varying = set(variable)
    missing = varying - rendered.keys()
    if missing:
        raise KeyError(f"not keys of the rendered object: {sorted(missing)}")
    runs: dict[str, list[bytes]] = {}
    current: list[bytes] | None = None
    for key, value in rendered.items():
        if key in varying:
            current = None
        elif current is None:
            current = runs[key] = [_dumps(value)]
        else:
            current.append(b"," + _dumps(key) + b":" + _dumps(value))
    return {key: Fragment(b"".join(parts)) for key, parts in runs.items()}


# --- prices: encoded once per record ----------------------------------------------------------

_PRICES: dict[int, tuple[Price, orjson.Fragment]] = {}
_MAX_PRICES = 4096


def price_json(record: Price) -> orjson.Fragment:
    cached = _PRICES.get(id(record))
    if cached is not None and cached[0] is record:
        return cached[1]
    if len(_PRICES) >= _MAX_PRICES:
        _PRICES.clear()
    encoded = Fragment(objects.dumps(objects.price(record)))
    _PRICES[id(record)] = (record, encoded)  # the record is kept, so its id is not reused
    return encoded


# --- subscriptions -------------------------------------------------------------------------------

_PROBE_PRICE = Price("price_probe", 0, "prod_probe", "usd", 0)
_PROBE_SUB = Subscription("sub_probe", 0, "cus_probe", (), "active", 0, 0, 0)

_ITEM = constant_runs(
    objects.subscription_item(Item("si_probe", 0, _PROBE_PRICE), _PROBE_SUB),
    ("id", "created", "current_period_end", "current_period_start", "metadata", "price",
     "quantity", "subscription"),
)  # fmt: skip


def _item(record: Item, sub: Subscription) -> dict[str, Any]:
    if record.price.meter is not None:
        return objects.subscription_item(record, sub)  # rare: no quantity, the slow path
    return {
        "id": record.id,
        "object": _ITEM["object"],
        "created": record.created,
        "current_period_end": sub.current_period_end,
        "current_period_start": sub.current_period_start,
        "discounts": _ITEM["discounts"],
        "metadata": record.metadata,
        "price": price_json(record.price),
        "quantity": record.quantity,
        "subscription": sub.id,
        "tax_rates": _ITEM["tax_rates"],
    }


_SUB = constant_runs(
    objects.subscription(_PROBE_SUB),
    ("id", "billing_cycle_anchor", "cancel_at", "cancel_at_period_end", "canceled_at",
     "cancellation_details", "collection_method", "created", "currency", "customer",
     "days_until_due", "description", "discounts", "ended_at", "items", "metadata",
     "pause_collection", "start_date", "status", "trial_end", "trial_start",
     "default_payment_method", "latest_invoice", "test_clock"),
)  # fmt: skip


def _subscription(r: Subscription) -> dict[str, Any]:
    pause = None
    if r.pause_behavior is not None:
        pause = {"behavior": r.pause_behavior, "resumes_at": None}
    return {
        "id": r.id,
        "object": _SUB["object"],
        "billing_cycle_anchor": r.billing_cycle_anchor,
        "billing_cycle_anchor_config": _SUB["billing_cycle_anchor_config"],
        "cancel_at": r.cancel_at,
        "cancel_at_period_end": r.cancel_at_period_end,
        "canceled_at": r.canceled_at,
        "cancellation_details": {
            "comment": r.cancellation_comment,
            "feedback": r.cancellation_feedback,
            "reason": r.cancellation_reason,
        },
        "collection_method": r.collection_method,
        "created": r.created,
        "currency": r.currency,
        "customer": r.customer,
        "customer_account": _SUB["customer_account"],
        "days_until_due": r.days_until_due,
        "default_payment_method": r.default_payment_method,
        "default_source": _SUB["default_source"],
        "description": r.description,
        "discounts": [discount.id for discount in r.discounts],
        "ended_at": r.ended_at,
        "invoice_settings": _SUB["invoice_settings"],
        "items": {
            "object": "list",
            "data": [_item(item, r) for item in r.items],
            "has_more": False,
            "url": f"/v1/subscription_items?subscription={r.id}",
        },
        "latest_invoice": r.latest_invoice,
        "livemode": _SUB["livemode"],
        "metadata": r.metadata,
        "next_pending_invoice_item_invoice": _SUB["next_pending_invoice_item_invoice"],
        "pause_collection": pause,
        "payment_settings": _SUB["payment_settings"],
        "start_date": r.start_date,
        "status": r.status,
        "test_clock": r.test_clock,
        "transfer_data": _SUB["transfer_data"],
        "trial_end": r.trial_end,
        "trial_settings": _SUB["trial_settings"],
        "trial_start": r.trial_start,
    }


# --- customers -----------------------------------------------------------------------------------

_CUSTOMER = constant_runs(
    objects.customer(Customer("cus_probe", 0)),
    ("id", "address", "created", "currency", "description", "discount", "email",
     "invoice_prefix", "metadata", "name", "phone", "invoice_settings", "test_clock"),
)  # fmt: skip


def _customer(r: Customer) -> dict[str, Any]:
    return {
        "id": r.id,
        "object": _CUSTOMER["object"],
        "address": r.address,
        "balance": _CUSTOMER["balance"],
        "created": r.created,
        "currency": r.currency,
        "customer_account": _CUSTOMER["customer_account"],
        "description": r.description,
        "discount": discount_json(r.discount) if r.discount else None,
        "email": r.email,
        "invoice_prefix": r.invoice_prefix,
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": r.default_payment_method,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": _CUSTOMER["livemode"],
        "metadata": r.metadata,
        "name": r.name,
        "next_invoice_sequence": _CUSTOMER["next_invoice_sequence"],
        "phone": r.phone,
        "preferred_locales": _CUSTOMER["preferred_locales"],
        "test_clock": r.test_clock,
    }


# --- events --------------------------------------------------------------------------------------

_EVENT = constant_runs(
    objects.event(Event("evt_probe", "probe", 0, {})),
    ("id", "created", "data", "pending_webhooks", "request", "type"),
)


def _data_object(obj: Any) -> Any:
    """`data.object` ready for orjson: a dict of varying keys and fragments, or the rendered
    dict for kinds without an encoder here."""
    kind = type(obj)
    if kind is Subscription:
        return _subscription(obj)
    if kind is Customer and not obj.deleted:
        return _customer(obj)
    return objects.render(obj)


def event_json(event: Event, pending_webhooks: int = 0) -> bytes:
    """`objects.dumps(objects.event(event, pending_webhooks))`, faster."""
    data: dict[str, Any] = {"object": _data_object(event.obj)}
    if event.previous is not None:
        data["previous_attributes"] = event.previous
    body = {
        "id": event.id,
        "object": _EVENT["object"],
        "created": event.created,
        "data": data,
        "livemode": _EVENT["livemode"],
        "pending_webhooks": pending_webhooks,
        "request": {"id": event.request_id, "idempotency_key": event.idempotency_key},
        "type": event.type,
    }
    try:
        return _dumps(body)
    except TypeError:  # what orjson refuses (an int beyond 64 bits, ...): the general path
        return objects.dumps(objects.event(event, pending_webhooks))
