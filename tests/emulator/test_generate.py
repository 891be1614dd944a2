"""Bulk generation: a second workload generated into the same store is new objects and new
events, never the first one's ids again (even with the same seed)."""

from __future__ import annotations

from stripe_emulator.generate import generate
from stripe_emulator.store import Store


def test_generating_twice_with_one_seed_repeats_no_id() -> None:
    store = Store()
    store.clock.advance(8 * 86_400)
    generate(store, customers=50, events_per_customer=4, seed=7)
    store.clock.advance(8 * 86_400)
    generate(store, customers=50, events_per_customer=4, seed=7)

    event_ids = [e.id for e in store.events.events if e.type.startswith("customer.")]
    assert len(event_ids) == len(set(event_ids)) == 400
    assert len(store.customers) == 100
    assert len(store.subscriptions) == 100


def test_one_seed_gives_one_workload() -> None:
    first, second = Store(), Store()
    for store in (first, second):
        generate(store, customers=20, events_per_customer=4, seed=3)
    first_ids, second_ids = (
        [e.id for e in store.events.events if e.type.startswith("customer.")]
        for store in (first, second)
    )
    assert first_ids == second_ids
