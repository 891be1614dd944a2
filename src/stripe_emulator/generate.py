"""Bulk workload generation for benchmarks: N customers, each with a subscription, and M
events per customer, built directly as records (no HTTP, no per-object JSON).

Per customer, in order: `customer.created`, `customer.subscription.created` (active), then a
realistic mix of `customer.subscription.updated` (cancel_at_period_end toggled on/off, status
flips active <-> past_due) and `customer.updated`, and for about one customer in ten a final
`customer.subscription.deleted`. Customers' events are interleaved and spread over the last
`span_seconds` (never before the newest existing event), so many events share a `created`
second. Every object's final state equals the `data.object` of its last event, which is what a
correct reconciler must end up with. Each customer gets `metadata.github_user_id`.
Generated events are not delivered to webhook endpoints.

Same-second ties on one object, for benchmarks of ordering: with `same_second_share`, that
share of the subscription updates comes with a second update of the same subscription in the
same second, changing the other field (a status flip with a cancel toggle): their payloads
order them (each update's `previous_attributes` fits only one order). `ambiguous_ties`
subscriptions (not canceled ones, first customers first) end with a status flip and its undoing in
one second, at the end: two orders fit, with different final states, so only a read of the
subscription settles it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from stripe_emulator import catalog
from stripe_emulator.events import Event
from stripe_emulator.ids import FastIds
from stripe_emulator.periods import period_end
from stripe_emulator.records import Customer, Item, Price, Subscription, evolve
from stripe_emulator.store import Store

_CANCEL_ON_PREVIOUS = {
    "cancel_at": None,
    "cancel_at_period_end": False,
    "canceled_at": None,
    "cancellation_details": {"reason": None},
}
_STATUS_PREVIOUS = {status: {"status": status} for status in ("active", "past_due")}


@dataclass
class GenerateResult:
    customers: int
    subscriptions: int
    events: int
    seconds: float
    price: str
    first_github_user_id: int
    tied_events: int = 0  # events that share their second with another of the same object
    ambiguous_ties: int = 0


def _price(store: Store, price_id: str | None) -> Price:
    if price_id is not None:
        return store.prices.get(price_id, "price")
    for price in store.prices.rows.values():
        if price.interval is not None and price.active:
            return price
    return catalog.create_price(
        store,
        currency="usd",
        unit_amount=1000,
        product=None,
        product_name="Emulated plan",
        interval="month",
        interval_count=1,
    )


class _Generator:
    def __init__(
        self,
        store: Store,
        price: Price,
        seed: int | None,
        first_user: int,
        same_second_share: float = 0.0,
    ) -> None:
        self.store = store
        self.price = price
        # Ids must never repeat (Stripe's do not): a seed alone would give a second
        # generation into the same store the ids of the first.
        ids_seed = None if seed is None else f"{seed}/{len(store.events)}"
        self.ids = FastIds(ids_seed)
        self.rng = random.Random(seed)
        self.first_user = first_user
        self.events: list[Event] = []
        self.customers: list[Customer] = []
        self.subs: list[Subscription | None] = []
        self.same_second_share = same_second_share
        self.tied_events = 0

    def event(self, type_: str, created: int, obj: Any, previous: Any = None) -> None:
        self.events.append(Event(self.ids.new("evt", created), type_, created, obj, previous))

    def step(self, index: int, step: int, last: bool, at: int) -> None:
        if step == 0:
            customer = Customer(
                id=self.ids.new("cus"),
                created=at,
                email=f"user{self.first_user + index}@example.com",
                name=f"User {self.first_user + index}",
                metadata={"github_user_id": str(self.first_user + index)},
                invoice_prefix=self.ids.new("x")[2:10].upper(),
                # Stripe sets it with the subscription, by a `customer.updated` that this
                # workload's fixed count of events per customer leaves out.
                currency=self.price.currency,
            )
            self.customers.append(customer)
            self.subs.append(None)
            self.event("customer.created", at, customer)
        elif step == 1:
            self.subs[index] = sub = self.new_subscription(self.customers[index].id, at)
            self.event("customer.subscription.created", at, sub)
        else:
            self.change(index, last, at)

    def new_subscription(self, customer_id: str, at: int) -> Subscription:
        sub_id = self.ids.new("sub", at)
        items = (Item(self.ids.new("si"), at, self.price),)
        return Subscription(
            id=sub_id,
            created=at,
            customer=customer_id,
            items=items,
            status="active",
            current_period_start=at,
            current_period_end=period_end(at, at, items),
            billing_cycle_anchor=at,
            currency=self.price.currency,
        )

    def change(self, index: int, last: bool, at: int) -> None:
        sub = self.subs[index]
        assert sub is not None
        if sub.status == "canceled":
            self.update_customer(index, at)
            return
        roll = self.rng.random()
        if last and roll < 0.1:
            new = evolve(
                sub,
                status="canceled",
                canceled_at=sub.canceled_at or at,
                ended_at=at,
                cancellation_reason="cancellation_requested",
            )
            self.subs[index] = new
            self.event("customer.subscription.deleted", at, new)
        elif roll < 0.45:
            self.toggle_cancel(index, sub, at)
            self.maybe_tie(index, at, self.flip_status)
        elif roll < 0.85:
            self.flip_status(index, self.subs[index], at)
            self.maybe_tie(index, at, self.toggle_cancel)
        else:
            self.update_customer(index, at)

    def maybe_tie(self, index: int, at: int, other_change: Any) -> None:
        """With `same_second_share`, a change of the other field in the same second."""
        if self.same_second_share and self.rng.random() < self.same_second_share:
            other_change(index, self.subs[index], at)
            self.tied_events += 2

    def flip_status(self, index: int, sub: Subscription | None, at: int) -> None:
        assert sub is not None
        status = "past_due" if sub.status == "active" else "active"
        self.subs[index] = new = evolve(sub, status=status)
        self.event("customer.subscription.updated", at, new, _STATUS_PREVIOUS[sub.status])

    def ambiguous_ties(self, count: int, at: int) -> int:
        """`count` active subscriptions flip their status and back within the second `at`."""
        made = 0
        for index, sub in enumerate(self.subs):
            if made == count:
                break
            if sub is not None and sub.status != "canceled":
                self.flip_status(index, sub, at)
                self.flip_status(index, self.subs[index], at)
                made += 1
        self.tied_events += 2 * made
        return made

    def toggle_cancel(self, index: int, sub: Subscription | None, at: int) -> None:
        assert sub is not None
        if not sub.cancel_at_period_end:
            new = evolve(
                sub,
                cancel_at_period_end=True,
                cancel_at=sub.current_period_end,
                canceled_at=at,
                cancellation_reason="cancellation_requested",
            )
            previous: dict[str, Any] = _CANCEL_ON_PREVIOUS
        else:
            new = evolve(
                sub,
                cancel_at_period_end=False,
                cancel_at=None,
                canceled_at=None,
                cancellation_reason=None,
            )
            previous = {
                "cancel_at": sub.cancel_at,
                "cancel_at_period_end": True,
                "canceled_at": sub.canceled_at,
                "cancellation_details": {"reason": "cancellation_requested"},
            }
        self.subs[index] = new
        self.event("customer.subscription.updated", at, new, previous)

    def update_customer(self, index: int, at: int) -> None:
        old = self.customers[index]
        name = f"User {self.first_user + index} ({self.rng.randrange(1_000_000)})"
        self.customers[index] = new = evolve(old, name=name)
        self.event("customer.updated", at, new, {"name": old.name})


def generate(
    store: Store,
    *,
    customers: int,
    events_per_customer: int,
    price_id: str | None = None,
    seed: int | None = None,
    span_seconds: int = 7 * 86_400,
    first_github_user_id: int | None = None,
    same_second_share: float = 0.0,
    ambiguous_ties: int = 0,
) -> GenerateResult:
    """Must be called with `store.lock` held."""
    started = time.perf_counter()
    price = _price(store, price_id)
    first_user = (
        first_github_user_id if first_github_user_id is not None else len(store.customers) + 1
    )
    now = store.now()
    begin = max(store.events.last_created, now - span_seconds)
    span = now - begin
    total = customers * events_per_customer
    gen = _Generator(store, price, seed, first_user, same_second_share)
    sequence = 0
    for step in range(max(events_per_customer, 2)):
        emits = step < events_per_customer
        for index in range(customers):
            at = begin + (sequence * span) // total if total else now
            if emits:
                gen.step(index, step, step == events_per_customer - 1, at)
                sequence += 1
            elif step == 1:  # fewer than two events each: the subscription still exists
                gen.subs[index] = gen.new_subscription(gen.customers[index].id, at)
    ties = gen.ambiguous_ties(ambiguous_ties, now) if ambiguous_ties else 0
    _commit(store, gen)
    seconds = time.perf_counter() - started
    return GenerateResult(
        customers, customers, len(gen.events), seconds, price.id, first_user, gen.tied_events, ties
    )


def _commit(store: Store, gen: _Generator) -> None:
    for customer in gen.customers:
        store.customers.add(customer.id, customer)
    for sub in gen.subs:
        if sub is not None:
            store.add_subscription(sub)
    store.events.extend(gen.events)
