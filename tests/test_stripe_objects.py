"""Decoding Stripe's events into the typed structs the reconciler reads: Stripe's published
example objects fit them, and one event whose object does not fit fails alone, not its page."""

from __future__ import annotations

import json
from typing import Any

import pytest

from collab_billing.mirror import customers
from collab_billing.mirror.subscriptions import SUBSCRIPTIONS, Subscription
from collab_billing.reconcile.groups import group_events
from collab_billing.stripe_gateway import Event, EventShapeError
from collab_billing.stripe_gateway.events import decode_event_page
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


def page(events: list[dict[str, Any]], has_more: bool = False) -> bytes:
    return json.dumps({"object": "list", "data": events, "has_more": has_more}).encode()


def test_a_published_subscription_fits_the_fields_we_keep() -> None:
    obj = published("subscription")
    (event,) = decode_event_page(page([event_of(obj, "customer.subscription.updated")])).events
    subscription = event.object_as(Subscription)
    row = SUBSCRIPTIONS.row(subscription, event.created, 7)
    assert row["stripe_subscription_id"] == obj["id"]
    assert row["stripe_subscription_status"] == obj["status"]
    assert SUBSCRIPTIONS.owner is not None and SUBSCRIPTIONS.owner(subscription) == obj["customer"]
    assert event.payload["data"]["object"] == obj


@pytest.mark.parametrize(
    ("resource", "event_type"),
    [("customer", "customer.updated"), ("checkout.session", "checkout.session.completed")],
)
def test_published_customers_and_sessions_name_their_customer(
    resource: str, event_type: str
) -> None:
    obj = published(resource)
    event = Event.from_dict(event_of(obj, event_type))
    expected = obj["id"] if resource == "customer" else (obj["customer"] or obj["id"])
    assert customers.customer_id_of(event) == expected


def test_an_event_that_does_not_fit_fails_alone() -> None:
    good = [
        event_of(
            {"id": f"sub_{n}", "customer": "cus_1", "status": "active"},
            "customer.subscription.updated",
            n,
        )
        for n in (1, 3)
    ]
    bad = event_of({"id": "sub_2", "status": 5}, "customer.subscription.updated", 2)

    events = decode_event_page(page([good[0], bad, good[1]], has_more=True)).events

    assert [e.id for e in events] == ["evt_1", "evt_2", "evt_3"]
    assert [events[0].object_as(Subscription).id, events[2].object_as(Subscription).id] == [
        "sub_1",
        "sub_3",
    ]
    with pytest.raises(EventShapeError, match="status"):
        events[1].object_as(Subscription)
    groups = {g.object_id: g.kind for g in group_events(events)}
    assert groups["evt_2"] == "malformed"  # its own group: nothing else waits on it
    assert events[1].payload == bad  # kept whole for the retry


@pytest.mark.parametrize("created", [0, 2**63, -1, 10**11])
def test_an_event_created_outside_any_plausible_second_is_refused(created: int) -> None:
    with pytest.raises(EventShapeError, match="created"):
        Event.from_dict({**event_of({"id": "cus_1"}, "customer.updated"), "created": created})
