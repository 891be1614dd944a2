"""The request counter (`/_emulator/requests`) and generated same-second ties."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from itertools import pairwise
from typing import Any

import httpx

from stripe_emulator.counter import route_of
from tests.emulator.conftest import KEY, Control


def test_requests_are_counted_by_route_and_status(ctl: Control) -> None:
    ctl("POST", "generate", {"customers": 3, "events_per_customer": 2})
    ctl("DELETE", "requests")
    sub = ctl("GET", "state")["subscriptions"][0]["id"]
    assert ctl.v1("GET", "events").status_code == 200
    assert ctl.v1("GET", "events").status_code == 200
    assert ctl.v1("GET", f"subscriptions/{sub}").status_code == 200
    assert ctl.v1("GET", "events", key=None).status_code == 401
    counts = ctl("GET", "requests")
    assert counts["total"] == 4
    assert counts["by_route"] == {"GET /v1/events": 3, "GET /v1/subscriptions/{id}": 1}
    assert counts["by_status"] == {"200": 3, "401": 1}
    assert counts["in_flight"] == 0 and counts["max_in_flight"] == 1
    assert ctl("DELETE", "requests")["total"] == 0
    ctl("POST", "faults", {"rate": 1.0, "statuses": [429]})
    ctl.v1("GET", "customers")
    ctl("DELETE", "faults")
    assert ctl("GET", "requests")["by_status"] == {"429": 1}


def test_requests_in_flight_at_once_are_counted(ctl: Control) -> None:
    ctl("POST", "faults", {"latency_ms": 200})

    async def four_at_once() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(base_url=ctl.url, headers=headers) as http:
            await asyncio.gather(*(http.get("/v1/events") for _ in range(4)))

    asyncio.run(four_at_once())
    ctl("DELETE", "faults")
    counts = ctl("GET", "requests")
    assert counts["max_in_flight"] == 4 and counts["in_flight"] == 0


def test_route_of_replaces_object_ids() -> None:
    assert route_of("GET", "/v1/subscriptions/sub_1AbC") == "GET /v1/subscriptions/{id}"
    assert route_of("POST", "/v1/customers") == "POST /v1/customers"


def _subscription_events(ctl: Control) -> dict[str, list[dict[str, Any]]]:
    events = ctl("GET", "state?events=true")["events"]
    by_sub: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["type"].startswith("customer.subscription."):
            by_sub[event["data"]["object"]["id"]].append(event)
    return by_sub


def _spread(ctl: Control) -> None:
    """The price's events now, then a week to spread generated events over."""
    ctl("POST", "generate", {"customers": 0})
    ctl("POST", "clock/advance", {"seconds": 8 * 86_400})


def test_same_second_share_pairs_updates_of_other_fields(ctl: Control) -> None:
    _spread(ctl)
    body = {"customers": 200, "events_per_customer": 10, "seed": 3, "same_second_share": 0.5}
    result = ctl("POST", "generate", body)
    assert result["events"] > 2_000 and result["tied_events"] > 300
    pairs = 0
    for events in _subscription_events(ctl).values():
        for first, second in pairwise(events):
            if first["created"] == second["created"]:
                pairs += 1
                # Another field each: the second's previous_attributes fit the first only.
                fields = [set(e["data"].get("previous_attributes") or {}) for e in (first, second)]
                assert fields[0] and fields[1] and fields[0] != fields[1]
    assert pairs * 2 == result["tied_events"]


def test_ambiguous_ties_end_with_a_flip_and_its_undoing(ctl: Control) -> None:
    _spread(ctl)
    body = {"customers": 30, "events_per_customer": 4, "seed": 3, "ambiguous_ties": 5}
    result = ctl("POST", "generate", body)
    assert result["ambiguous_ties"] == 5 and result["tied_events"] == 10
    state = {s["id"]: s for s in ctl("GET", "state")["subscriptions"]}
    ends = [e[-2:] for e in _subscription_events(ctl).values() if len(e) >= 2]
    tied = [pair for pair in ends if pair[0]["created"] == pair[1]["created"]]
    assert len(tied) == 5
    for flip, undo in tied:
        assert undo["data"]["previous_attributes"] == {"status": flip["data"]["object"]["status"]}
        sub = state[undo["data"]["object"]["id"]]
        assert sub == undo["data"]["object"]
        assert sub["status"] == flip["data"]["previous_attributes"]["status"]
