"""Cut events (in `created` order) into the batches that the applier commits one at a time.

Events of one object in one second must share a batch: only together can their order be
settled (see `ordering`). Cutting between seconds keeps that simply. But a second can hold
more events than a batch should (a bulk change of thousands of objects), and one transaction
over all of them grows without bound: on PostgreSQL it takes a lock per object, and the lock
table holds a few thousand. Such a second is cut between objects instead.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import groupby
from operator import attrgetter

from collab_billing.reconcile.events import Event, object_id, object_kind

_CREATED = attrgetter("created")
_KIND_RANK = {"customer": 0, "subscription": 1, "other": 2}


def batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    """Batches of about `size` whole seconds; a second of more than `size` events is cut into
    batches of at most `size` by object (an object with more than `size` events in that one
    second is a batch of its own)."""
    batch: list[Event] = []
    for _, run in groupby(events, key=_CREATED):
        second = list(run)
        if len(second) > size:
            if batch:
                yield batch
                batch = []
            yield from _split_by_object(second, size)
            continue
        batch.extend(second)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def start_of_last_second(events: Sequence[Event]) -> int:
    """The index of the first event of the newest second in `events` (sorted by `created`)."""
    if not events:
        return 0
    return bisect_left(events, events[-1].created, key=_CREATED)


def _split_by_object(second: list[Event], size: int) -> Iterator[list[Event]]:
    """One second's events in batches of whole objects; customers first, so that their links
    exist when their subscriptions' batches come."""
    by_object: dict[tuple[str, str], list[Event]] = {}
    for event in second:  # each object's events keep the order Stripe listed them in
        by_object.setdefault((object_kind(event.type), object_id(event)), []).append(event)
    chunk: list[Event] = []
    for key in sorted(by_object, key=lambda key: _KIND_RANK[key[0]]):
        events = by_object[key]
        if chunk and len(chunk) + len(events) > size:
            yield chunk
            chunk = []
        chunk.extend(events)
    if chunk:
        yield chunk
