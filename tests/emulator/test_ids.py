"""Ids shaped as Stripe's: each kind as long as in Stripe's published example objects; the
newer kinds start with the second they were made and the account's part; and within a second
they are in no order, so the service still has nothing to compare."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from typing import Any

import stripe

from stripe_emulator import ids
from stripe_emulator.generate import generate
from stripe_emulator.store import Store
from tests.emulator.conftest import recurring_price
from tests.stripe_openapi import fixtures_path

KINDS = ("cus", "prod", "si", "sub", "price", "evt", "bps", "bpc", "we", "in", "li")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


@cache
def published_ids() -> dict[str, list[str]]:
    """Every real-looking id of each kind in Stripe's example objects (not `cus_123`)."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for value in strings(json.loads(fixtures_path().read_text())["resources"]):
        kind, _, tail = value.partition("_")
        if kind in found and tail.isalnum() and len(tail) >= 14:
            found[kind].append(value)
    return found


def account_part(stripe_id: str) -> str:
    return stripe_id.partition("_")[2][6:16]


def test_each_kind_is_shaped_as_in_stripes_examples() -> None:
    published = published_ids()
    # The account that made the examples: the part most of their ids share.
    account, _ = Counter(
        account_part(i) for kind in KINDS for i in published[kind] if len(i) > 20
    ).most_common(1)[0]
    ours = {kind: ids.new_id(kind) for kind in KINDS}
    our_account = account_part(ours["evt"])

    for kind in KINDS:
        assert published[kind], kind
        theirs = published[kind][0]
        assert len(ours[kind]) == len(theirs), (kind, ours[kind], theirs)
        timed = account_part(theirs) == account
        assert (ids.id_seconds(ours[kind]) is not None) == timed, (kind, ours[kind], theirs)
        assert (account_part(ours[kind]) == our_account) == timed, (kind, ours[kind], theirs)


def test_ids_made_over_http_count_the_second_they_were_made_in(
    client: stripe.StripeClient,
) -> None:
    before = int(time.time())
    price = recurring_price(client)
    customer = client.v1.customers.create(params={"email": "ids@example.com"})
    subscription = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}]}
    )
    events = client.v1.events.list(params={"limit": 100}).data
    after = int(time.time())

    timed = [price.id, subscription.id, *(event.id for event in events)]
    assert len(events) >= 2
    for stripe_id in timed:
        assert before <= (ids.id_seconds(stripe_id) or 0) <= after, stripe_id
    assert len({account_part(stripe_id) for stripe_id in timed}) == 1
    assert ids.id_seconds(customer.id) is None
    assert ids.id_seconds(subscription["items"].data[0].id) is None


def test_generated_history_is_timed_by_created_but_unordered_within_a_second() -> None:
    store = Store()
    store.clock.advance(8 * 86_400)
    generate(store, customers=300, events_per_customer=6, seed=11, span_seconds=600)
    events = [e for e in store.events.events if e.type.startswith("customer.")]

    assert all(ids.id_seconds(e.id) == e.created for e in events)
    subscriptions = store.subscriptions.rows.values()
    assert all(ids.id_seconds(s.id) == s.created for s in subscriptions)
    # Several events share each second here, and their ids do not follow their order.
    inversions = sum(
        1
        for earlier, later in pairwise(events)
        if earlier.created == later.created and later.id < earlier.id
    )
    assert inversions > len(events) // 10
