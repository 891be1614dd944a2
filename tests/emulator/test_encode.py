"""`encode.event_json` gives exactly the bytes of encoding the rendered event, for any record."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stripe_emulator import encode, objects
from stripe_emulator.events import Event
from stripe_emulator.generate import generate
from stripe_emulator.records import (
    Coupon,
    Customer,
    Discount,
    Item,
    Price,
    Product,
    Subscription,
)
from stripe_emulator.store import Store


def expected(event: Event, pending: int = 0) -> bytes:
    return objects.dumps(objects.event(event, pending))


text = st.text(max_size=12)
maybe_text = st.none() | text
maybe_int = st.none() | st.integers(0, 2**40)
metadata = st.dictionaries(text, text, max_size=3)

prices = st.builds(
    Price,
    id=st.sampled_from(["price_a", "price_b"]),
    created=st.integers(0, 2**40),
    product=st.just("prod_a"),
    currency=st.sampled_from(["usd", "eur"]),
    unit_amount=maybe_int,
    interval=st.none() | st.sampled_from(["month", "year"]),
    interval_count=st.integers(1, 3),
    nickname=maybe_text,
    lookup_key=maybe_text,
    metadata=metadata,
    active=st.booleans(),
    tax_behavior=st.sampled_from(["unspecified", "exclusive"]),
)
items = st.builds(
    Item,
    id=st.from_regex(r"si_[a-z]{4}", fullmatch=True),
    created=st.integers(0, 2**40),
    price=prices,
    quantity=st.integers(1, 5),
    metadata=metadata,
)
discounts = st.builds(
    Discount,
    id=st.from_regex(r"di_[a-z]{4}", fullmatch=True),
    coupon=st.just(Coupon("half", 0, "forever", percent_off=50.0)),
    customer=text,
    subscription=maybe_text,
    start=st.integers(0, 2**40),
)
subscriptions = st.builds(
    Subscription,
    id=st.from_regex(r"sub_[A-Za-z0-9]{6}", fullmatch=True),
    created=st.integers(0, 2**40),
    customer=text,
    items=st.lists(items, max_size=3).map(tuple),
    status=st.sampled_from(["active", "past_due", "canceled", "trialing"]),
    current_period_start=st.integers(0, 2**40),
    current_period_end=st.integers(0, 2**40),
    currency=st.sampled_from(["usd", "eur"]),
    cancel_at_period_end=st.booleans(),
    cancel_at=maybe_int,
    canceled_at=maybe_int,
    ended_at=maybe_int,
    cancellation_reason=maybe_text,
    cancellation_comment=maybe_text,
    cancellation_feedback=maybe_text,
    trial_start=maybe_int,
    trial_end=maybe_int,
    metadata=metadata,
    description=maybe_text,
    collection_method=st.sampled_from(["charge_automatically", "send_invoice"]),
    days_until_due=maybe_int,
    pause_behavior=st.none() | st.sampled_from(["void", "keep_as_draft"]),
    discounts=st.lists(discounts, max_size=2).map(tuple),
)
addresses = st.none() | st.fixed_dictionaries(
    {key: st.none() | text for key in ("city", "country", "line1", "line2", "postal_code", "state")}
)
customers = st.builds(
    Customer,
    id=st.from_regex(r"cus_[A-Za-z0-9]{6}", fullmatch=True),
    created=st.integers(0, 2**40),
    email=maybe_text,
    name=maybe_text,
    description=maybe_text,
    phone=maybe_text,
    metadata=metadata,
    address=addresses,
    invoice_prefix=text,
    deleted=st.booleans(),
    currency=st.none() | st.sampled_from(["usd", "eur"]),
    discount=st.none() | discounts,
)
previous = st.none() | st.dictionaries(
    text, st.none() | st.integers() | text | st.dictionaries(text, text), max_size=3
)


@settings(max_examples=300, deadline=None)
@given(
    obj=subscriptions | customers | prices,
    previous=previous,
    pending=st.integers(0, 3),
    request_id=maybe_text,
    key=maybe_text,
    event_type=text,
)
def test_event_json_equals_the_rendered_event(
    obj: Any, previous: dict[str, Any] | None, pending: int, request_id: str | None,
    key: str | None, event_type: str,
) -> None:  # fmt: skip
    event = Event("evt_x", event_type, 1_700_000_000, obj, previous, request_id, key)
    assert encode.event_json(event, pending) == expected(event, pending)


def test_generated_workload_events() -> None:
    store = Store()
    store.clock.advance(8 * 86_400)
    generate(store, customers=300, events_per_customer=10, seed=3)
    for event in store.events.events:
        assert store.event_json(event) == objects.dumps(store.render_event(event))


def test_other_kinds_and_dicts() -> None:
    product = Product("prod_x", 1, 2, "Pro", metadata={"é": "ü"})
    for obj in (product, {"id": "thing_1", "object": "thing", "n": [1, 2]}):
        event = Event("evt_y", "product.created", 5, obj, {"name": "old"}, "req_1", "key-1")
        assert encode.event_json(event, 2) == expected(event, 2)


def test_values_orjson_refuses_take_the_general_path() -> None:
    sub = Subscription("sub_big", 2**70, "cus_x", (), "active", 0, 1, 0)
    event = Event("evt_big", "customer.subscription.created", 2**70, sub)
    assert json.loads(encode.event_json(event)) == json.loads(json.dumps(objects.event(event)))


def test_constant_runs() -> None:
    rendered = {"a": 1, "b": None, "c": "x", "d": [True]}
    runs = encode.constant_runs(rendered, ["c"])
    assert sorted(runs) == ["a", "d"]
    # Each run's fragment carries the run's later members: the object needs only its first key.
    assert orjson.dumps({"a": runs["a"], "c": "x", "d": runs["d"]}) == orjson.dumps(rendered)
    with pytest.raises(KeyError):
        encode.constant_runs({"a": 1}, ["nope"])
