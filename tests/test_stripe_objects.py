"""Decoding Stripe's events into the typed structs the reconciler reads: Stripe's published
example objects fit them, and one event that does not fit fails alone, not its page."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from collab_billing.db.mirror import SubscriptionState
from collab_billing.reconcile.events import object_id
from collab_billing.stripe_objects import DecodeError, Event, decode_event_list
from tests.stripe_openapi import fixtures_path


def published(resource: str) -> dict[str, Any]:
    example: dict[str, Any] = json.loads(fixtures_path().read_text())["resources"][resource]
    return example


def event_of(obj: dict[str, Any], event_type: str, n: int = 1) -> dict[str, Any]:
    return {
        "id": f"evt_{n}",
        "object": "event",
        "type": event_type,
        "created": 1_700_000_000 + n,
        "livemode": False,
        "data": {"object": obj, "previous_attributes": {"status": "trialing"}},
    }


@pytest.mark.parametrize(
    ("resource", "event_type"),
    [
        ("subscription", "customer.subscription.updated"),
        ("customer", "customer.updated"),
        ("checkout.session", "checkout.session.completed"),
    ],
)
def test_stripes_published_objects_fit_the_fields_we_read(resource: str, event_type: str) -> None:
    obj = published(resource)
    page = decode_event_list(orjson.dumps({"data": [event_of(obj, event_type)], "has_more": False}))
    (event,) = page.data
    assert event.object.id == obj["id"]
    assert event.payload["data"]["object"] == obj
    if resource == "subscription":
        state = SubscriptionState.from_fields(event.object, event.created)
        assert state.stripe_subscription_id == obj["id"]
        assert state.stripe_customer_id == obj["customer"]
        assert state.status == obj["status"]


def test_an_event_that_does_not_fit_fails_alone() -> None:
    good = [
        event_of({"id": f"sub_{n}", "status": "active"}, "customer.subscription.updated", n)
        for n in (1, 3)
    ]
    bad = event_of({"id": "sub_2", "status": 5}, "customer.subscription.updated", 2)
    body = orjson.dumps({"data": [good[0], bad, good[1]], "has_more": True})

    page = decode_event_list(body)

    assert [e.id for e in page.data] == ["evt_1", "evt_2", "evt_3"] and page.has_more
    assert [page.data[0].object.id, page.data[2].object.id] == ["sub_1", "sub_3"]
    with pytest.raises(DecodeError, match="status"):
        page.data[1].object  # noqa: B018
    assert object_id(page.data[1]) == "evt_2"  # its own group, so nothing else waits on it
    assert page.data[1].payload == bad  # kept whole for the retry


def test_payloads_are_parsed_from_the_json_the_events_came_in() -> None:
    events = [
        event_of({"id": f"cus_{n}", "metadata": {"k": "v"}}, "customer.updated", n)
        for n in range(5)
    ]
    page = decode_event_list(orjson.dumps({"data": events, "has_more": False}))
    assert [event.payload for event in reversed(page.data)] == events[::-1]
    single = Event.from_json(orjson.dumps(events[2]))
    assert single.payload == events[2] and single.object.metadata == {"k": "v"}
    assert Event.from_dict(events[3]).payload == events[3]
