"""`/v1/events`: newest first, type filters, created ranges, pagination both ways, ties."""

from __future__ import annotations

import time

import pytest
import stripe

from stripe_emulator.events import Event
from stripe_emulator.records import Customer
from stripe_emulator.server import RunningEmulator
from tests.emulator.conftest import Control


def seed_events(running: RunningEmulator, spec: list[tuple[str, int]]) -> list[str]:
    """Append events (type, created) directly to the log; returns their ids in order."""
    store = running.store
    ids = []
    with store.lock:
        for number, (type_, created) in enumerate(spec):
            customer = Customer(id=f"cus_seed{number}", created=created)
            event = store.emit(type_, customer, created=created)
            ids.append(event.id)
    return ids


@pytest.fixture
def seeded(ctl: Control) -> list[str]:
    now = int(time.time())
    spec = [
        ("customer.created", now - 100),
        ("customer.subscription.created", now - 100),
        ("customer.subscription.updated", now - 100),  # three in one second
        ("customer.updated", now - 50),
        ("customer.subscription.updated", now - 40),
        ("checkout.session.completed", now - 40),
        ("customer.subscription.deleted", now - 10),
        ("customer.deleted", now - 5),
    ]
    return seed_events(ctl.emulator, spec)


def ids_of(listing: stripe.ListObject[stripe.Event]) -> list[str]:
    return [event.id for event in listing.data]


def test_newest_first_with_ties_in_insertion_order(
    client: stripe.StripeClient, seeded: list[str]
) -> None:
    listing = client.v1.events.list(params={"limit": 100})
    assert ids_of(listing) == list(reversed(seeded))
    assert listing.has_more is False
    assert listing.url == "/v1/events"
    created = [event.created for event in listing.data]
    assert created == sorted(created, reverse=True)


def test_type_exact_wildcard_and_types(client: stripe.StripeClient, seeded: list[str]) -> None:
    exact = client.v1.events.list(params={"type": "customer.subscription.updated"})
    assert ids_of(exact) == [seeded[4], seeded[2]]
    wildcard = client.v1.events.list(params={"type": "customer.subscription.*"})
    assert ids_of(wildcard) == [seeded[6], seeded[4], seeded[2], seeded[1]]
    many = client.v1.events.list(params={"types": ["customer.created", "customer.deleted"]})
    assert ids_of(many) == [seeded[7], seeded[0]]
    mixed = client.v1.events.list(
        params={"types": ["customer.subscription.updated", "customer.updated"]}
    )
    assert ids_of(mixed) == [seeded[4], seeded[3], seeded[2]]
    # Like Stripe, `types[]` takes exact names (the wildcard is for `type`).
    assert client.v1.events.list(params={"types": ["customer.subscription.*"]}).data == []
    assert client.v1.events.list(params={"type": "invoice.paid"}).data == []


def test_created_ranges(client: stripe.StripeClient, seeded: list[str], ctl: Control) -> None:
    store = ctl.emulator.store
    at = {event_id: store.events.get(event_id).created for event_id in seeded}  # type: ignore[union-attr]
    tie = at[seeded[0]]
    assert ids_of(client.v1.events.list(params={"created": tie})) == list(reversed(seeded[:3]))
    gt = client.v1.events.list(params={"created": {"gt": tie}})
    assert ids_of(gt) == list(reversed(seeded[3:]))
    window = client.v1.events.list(params={"created": {"gte": at[seeded[3]], "lte": at[seeded[5]]}})
    assert ids_of(window) == [seeded[5], seeded[4], seeded[3]]
    lt = client.v1.events.list(params={"created": {"lt": at[seeded[3]]}})
    assert ids_of(lt) == list(reversed(seeded[:3]))
    both = client.v1.events.list(
        params={"created": {"gte": tie}, "type": "customer.subscription.updated", "limit": 1}
    )
    assert ids_of(both) == [seeded[4]] and both.has_more is True


def test_pagination_both_ways_through_ties(client: stripe.StripeClient, seeded: list[str]) -> None:
    newest_first = list(reversed(seeded))
    pages = []
    cursor = None
    while True:
        params = {"limit": 3, **({"starting_after": cursor} if cursor else {})}
        page = client.v1.events.list(params=params)  # type: ignore[arg-type]
        pages.append(ids_of(page))
        if not page.has_more:
            break
        cursor = page.data[-1].id
    assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:8]]

    back = client.v1.events.list(params={"limit": 3, "ending_before": newest_first[6]})
    assert ids_of(back) == newest_first[3:6]
    assert back.has_more is True
    top = client.v1.events.list(params={"limit": 3, "ending_before": newest_first[3]})
    assert ids_of(top) == newest_first[0:3]
    assert top.has_more is False

    typed = client.v1.events.list(
        params={"type": "customer.subscription.*", "limit": 2, "starting_after": seeded[4]}
    )
    assert ids_of(typed) == [seeded[2], seeded[1]]
    typed_back = client.v1.events.list(
        params={"type": "customer.subscription.*", "limit": 1, "ending_before": seeded[2]}
    )
    assert ids_of(typed_back) == [seeded[4]] and typed_back.has_more is True

    everything = [e.id for e in client.v1.events.list(params={"limit": 2}).auto_paging_iter()]
    assert everything == newest_first


def test_retrieve_and_unknown_cursor(client: stripe.StripeClient, seeded: list[str]) -> None:
    event = client.v1.events.retrieve(seeded[3])
    assert event.type == "customer.updated"
    assert event.object == "event"
    assert event.api_version == "2026-08-26.dahlia"
    assert event.livemode is False
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.events.list(params={"starting_after": "evt_unknown"})
    assert raised.value.http_status == 404
    assert raised.value.param == "starting_after"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.list(params={"starting_after": seeded[1], "ending_before": seeded[2]})


def test_thirty_day_retention(client: stripe.StripeClient, seeded: list[str], ctl: Control) -> None:
    ctl("POST", "clock/advance", {"seconds": 30 * 86400 - 60})
    listed = ids_of(client.v1.events.list(params={"limit": 100}))
    assert seeded[0] not in listed and seeded[7] in listed  # seeded[0] is 100 s old
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.events.retrieve(seeded[0])


def test_pages_deep_in_a_large_log_are_right(client: stripe.StripeClient, ctl: Control) -> None:
    store = ctl.emulator.store
    now = int(time.time())
    obj = Customer(id="cus_bulk", created=now)
    with store.lock:
        store.events.extend(
            [
                Event(f"evt_bulk{n}", "customer.updated" if n % 1000 else "customer.created",
                      now - 3600 + n // 100, obj)
                for n in range(200_000)
            ]
        )  # fmt: skip
    # Correct pages deep in a large log; that a page costs O(page), not O(log), is shown by
    # counting reads in tests/emulator/test_pagination.py (no timing in tests).
    page = client.v1.events.list(params={"limit": 100, "type": "customer.created"})
    assert len(page.data) == 100
    assert page.data[0].id == "evt_bulk199000"
    deep = client.v1.events.list(params={"limit": 100, "starting_after": "evt_bulk150000"})
    assert [e.id for e in deep.data] == [f"evt_bulk{n}" for n in range(149_999, 149_899, -1)]
