"""Bulk generation, the state dump and reset."""

from __future__ import annotations

from collections import Counter
from typing import Any

import stripe

from tests.emulator.conftest import Control


def test_generate_counts_and_consistency(client: stripe.StripeClient, ctl: Control) -> None:
    result = ctl("POST", "generate", {"customers": 300, "events_per_customer": 8, "seed": 7})
    assert result["customers"] == 300
    assert result["events"] == 300 * 8
    store = ctl.emulator.store
    with store.lock:
        events = store.events.events
        assert len(events) == 300 * 8 + 2  # plus product.created and price.created
        created = [event.created for event in events]
        assert created == sorted(created)
        assert len(set(created)) < len(created)  # same-second ties
        assert len({event.id for event in events}) == len(events)
        # Every object's final state is its last event's data.object.
        last: dict[str, Any] = {}
        for event in events:
            last[event.obj.id] = event
        for sub in store.subscriptions.rows.values():
            assert last[sub.id].obj == sub
        for customer in store.customers.rows.values():
            assert last[customer.id].obj == customer
    types = Counter(event.type for event in events)
    assert types["customer.created"] == 300
    assert types["customer.subscription.created"] == 300
    assert types["customer.subscription.updated"] > 0
    assert types["customer.updated"] > 0

    page = client.v1.events.list(params={"type": "customer.subscription.*", "limit": 100})
    assert len(page.data) == 100 and page.has_more
    subs = client.v1.subscriptions.list(params={"status": "all", "limit": 100})
    assert len(subs.data) == 100
    customer = client.v1.customers.list(params={"limit": 1}).data[0]
    assert customer.metadata["github_user_id"].isdigit()


def test_generate_validation(ctl: Control) -> None:
    assert ctl.raw("POST", "generate", {"customers": -1}).status_code == 400
    assert (
        ctl.raw("POST", "generate", {"customers": 1, "events_per_customer": 0}).status_code == 400
    )
    assert ctl.raw("POST", "generate", {"customers": "many"}).status_code == 400
    assert ctl.raw("POST", "generate", {"price": "price_nope", "customers": 1}).status_code == 404


def test_generate_one_event_each(ctl: Control) -> None:
    result = ctl("POST", "generate", {"customers": 5, "events_per_customer": 1})
    assert result["events"] == 5
    assert len(ctl("GET", "state")["subscriptions"]) == 5


def test_state_dump_and_reset(client: stripe.StripeClient, ctl: Control) -> None:
    customer = client.v1.customers.create(params={"email": "s@example.com"})
    state = ctl("GET", "state")
    assert [c["id"] for c in state["customers"]] == [customer.id]
    assert state["event_count"] == 1
    assert "events" not in state
    with_events = ctl.http.get("/_emulator/state", params={"events": "true"}).json()
    assert with_events["events"][0]["data"]["object"]["id"] == customer.id
    ctl("POST", "clock/advance", {"seconds": 100})
    assert ctl("GET", "clock")["offset"] == 100
    assert ctl("DELETE", "state") == {"reset": True}
    state = ctl("GET", "state")
    assert state["customers"] == [] and state["event_count"] == 0
    assert ctl("GET", "clock")["offset"] == 0


def test_the_clock_moves_at_most_two_years_at_a_time(ctl: Control) -> None:
    """A jump of 1e30 seconds made every renewal on the way, without end, in the process of
    `collab-billing dev`; JSON's 1e400 (infinity) was a 500."""
    ctl("POST", "generate", {"customers": 2, "events_per_customer": 2})
    for seconds in (-1, 2 * 366 * 86_400 + 1, 1e30):
        response = ctl.http.post("/_emulator/clock/advance", json={"seconds": seconds})
        assert response.status_code == 400, response.text
        assert "seconds" in response.json()["error"]["message"]
    response = ctl.http.post(
        "/_emulator/clock/advance",
        content=b'{"seconds": 1e400}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert ctl("GET", "clock")["offset"] == 0
    assert ctl("POST", "clock/advance", {"seconds": 2 * 366 * 86_400})["offset"] > 0
