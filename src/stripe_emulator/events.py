"""The event log: append-only, creation-ordered, indexed for O(page) listing.

- `events` is the creation-ordered array; an event's position is its pagination cursor.
- `created` (array of int64) is non-decreasing (the clock only moves forward), so `created`
  filters and the 30-day retention window are two bisects.
- `by_type` holds, per event type, the ascending positions of that type's events. A `type` or
  `types[]` filter merges the (few) matching per-type arrays lazily, newest first, so a page
  costs O(limit * log k) whatever the total number of events. The price is 8 bytes per event.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from typing import Any

from stripe_emulator.pagination import Positions, page_positions

RETENTION_SECONDS = 30 * 86_400


class Event:
    """One event. `obj` is the immutable record (or dict) that becomes `data.object`."""

    __slots__ = ("created", "id", "idempotency_key", "obj", "previous", "request_id", "type")

    def __init__(
        self,
        event_id: str,
        type_: str,
        created: int,
        obj: Any,
        previous: dict[str, Any] | None = None,
        request_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        self.id = event_id
        self.type = type_
        self.created = created
        self.obj = obj
        self.previous = previous
        self.request_id = request_id
        self.idempotency_key = idempotency_key


class EventLog:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.created: array[int] = array("q")
        self.positions: dict[str, int] = {}
        self.by_type: dict[str, array[int]] = {}

    def __len__(self) -> int:
        return len(self.events)

    @property
    def last_created(self) -> int:
        return self.created[-1] if self.created else 0

    def append(self, event: Event) -> int:
        # Keep `created` non-decreasing even if a caller passes an older timestamp.
        if self.created and event.created < self.created[-1]:
            event.created = self.created[-1]
        position = len(self.events)
        self.events.append(event)
        self.created.append(event.created)
        self.positions[event.id] = position
        positions = self.by_type.get(event.type)
        if positions is None:
            positions = self.by_type[event.type] = array("q")
        positions.append(position)
        return position

    def get(self, event_id: str) -> Event | None:
        position = self.positions.get(event_id)
        return None if position is None else self.events[position]

    def matching_types(self, patterns: list[str], wildcards: bool = True) -> list[str]:
        """Stored event types matching `type` (a trailing `*` is a wildcard) or `types[]`
        (exact names only: Stripe documents no wildcard there)."""
        matched: set[str] = set()
        for pattern in patterns:
            if wildcards and pattern.endswith("*"):
                stem = pattern[:-1]
                matched.update(name for name in self.by_type if name.startswith(stem))
            elif pattern in self.by_type:
                matched.add(pattern)
        return sorted(matched)

    def page(
        self,
        *,
        types: list[str] | None,
        wildcards: bool = True,
        created_gte: int | None,
        created_lt: int | None,
        oldest: int,
        after: int | None,
        before: int | None,
        limit: int,
    ) -> tuple[list[Event], bool]:
        lo = bisect_left(self.created, oldest)
        if created_gte is not None:
            lo = max(lo, bisect_left(self.created, created_gte))
        hi = len(self.events)
        if created_lt is not None:
            hi = min(hi, bisect_left(self.created, created_lt))
        seqs: list[Positions]
        if types is None:
            seqs = [range(len(self.events))]
        else:
            seqs = [self.by_type[name] for name in self.matching_types(types, wildcards)]
            if not seqs:
                return [], False
        found, has_more = page_positions(seqs, lo, hi, after=after, before=before, limit=limit)
        return [self.events[position] for position in found], has_more

    def extend(self, events: list[Event]) -> None:
        """Bulk append (generation); `events` must already be in non-decreasing `created`."""
        if events and self.created and events[0].created < self.created[-1]:
            raise ValueError("bulk events must not be older than the log's newest event")
        base = len(self.events)
        self.events.extend(events)
        self.created.extend(event.created for event in events)
        positions = self.positions
        by_type = self.by_type
        for position, event in enumerate(events, base):
            positions[event.id] = position
            typed = by_type.get(event.type)
            if typed is None:
                typed = by_type[event.type] = array("q")
            typed.append(position)
