"""Webhook deliveries that wait are applied together: one transaction for all of them.

A delivery that finds the writers busy joins the deliveries waiting; the next free writer takes
every waiting delivery (up to `MAX_GROUP`) and applies them in one `Applier.apply` call, then
answers each with its own event's outcome. Under light load a group is one delivery, as before.
Under load, a commit (and its `fsync`) serves many deliveries instead of one.

On SQLite it is what keeps webhooks alive during a drain: the reconciler's batch transactions
hold the one write lock most of the time, and deliveries got it a few dozen times a second.
One transaction each, they fell behind without bound (p50 40 s at 100 deliveries/s); in groups,
each turn of the lock answers everything that waited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from collab_billing.reconcile.events import Event

MAX_GROUP = 256  # deliveries in one transaction: bounds its duration under a burst

ApplyGroup = Callable[[list[Event]], dict[str, str]]  # events -> outcome by event id


@dataclass(eq=False)
class _Delivery:
    event: Event
    answer: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    taken: bool = False  # a writer took it into its group


class DeliveryGroups:
    """Apply deliveries in groups with at most `writers` groups in flight (belongs to the
    running event loop: make it on first use)."""

    def __init__(self, apply_group: ApplyGroup, writers: int) -> None:
        self._apply_group = apply_group
        self._writers = anyio.CapacityLimiter(writers)
        self._waiting: list[_Delivery] = []

    async def deliver(self, event: Event) -> str:
        """The outcome of applying `event`, alone or with others that waited with it."""
        delivery = _Delivery(event)
        self._waiting.append(delivery)
        try:
            async with self._writers:
                # Until a writer (maybe this one) takes it: more than a group may be waiting.
                while not delivery.taken:
                    await self._apply_waiting()
        except BaseException:
            if not delivery.taken:
                self._waiting.remove(delivery)
            raise
        return await delivery.answer

    async def _apply_waiting(self) -> None:
        group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
        for delivery in group:
            delivery.taken = True
        events = sorted((d.event for d in group), key=lambda event: event.created)
        try:
            outcomes = await anyio.to_thread.run_sync(self._apply_group, events)
        except Exception as error:  # each delivery of the group fails with it
            for delivery in group:
                delivery.answer.set_exception(error)
            return
        except BaseException:  # cancelled: the others must not wait for ever
            for delivery in group:
                delivery.answer.set_exception(RuntimeError("the delivery's writer was cancelled"))
                delivery.answer.exception()  # retrieved: only the waiting delivery raises it
            raise
        answered: set[str] = set()
        for delivery in group:
            # Stripe may deliver one event twice at once: the first copy is the one handled.
            event_id = delivery.event.id
            first = event_id not in answered
            answered.add(event_id)
            delivery.answer.set_result(outcomes.get(event_id, "applied") if first else "duplicate")
