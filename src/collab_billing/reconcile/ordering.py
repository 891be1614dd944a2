"""Ordering the events of one object that share a `created` second.

Stripe stamps events in whole seconds and event ids are not ordered; the payloads often fix
the order anyway (docs/reconciliation.md, "Applying a batch", rule 2). When every consistent
order ends in the same state, that payload is as good as a fresh read; otherwise the caller
re-reads the object.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise, permutations
from typing import Any

from collab_billing.stripe_gateway.events import Event

# 6! = 720 orders to check; beyond that a re-read is cheaper than the search.
MAX_TIED_EVENTS = 6


def _is_first(event: Event) -> bool:
    return event.type.endswith(".created")


def _is_last(event: Event) -> bool:
    return event.type.endswith(".deleted")


def _follows(previous: Event, current: Event) -> bool:
    """Could `current` have happened right after `previous`?"""
    before: dict[str, Any] = current.payload["data"].get("previous_attributes") or {}
    if not before:
        # A deletion carries no previous_attributes; any other event without them
        # (a notice such as trial_will_end) has no provable place.
        return _is_last(current)
    after_previous = previous.payload["data"]["object"]
    return all(_matches(after_previous.get(key), value) for key, value in before.items())


def _matches(actual: Any, expected: Any) -> bool:
    # previous_attributes holds only the changed part of nested objects.
    if isinstance(expected, dict) and isinstance(actual, dict):
        return all(_matches(actual.get(key), value) for key, value in expected.items())
    return bool(actual == expected)


def _consistent(order: Sequence[Event]) -> bool:
    if any(_is_first(event) for event in order[1:]) or any(_is_last(e) for e in order[:-1]):
        return False
    return all(_follows(a, b) for a, b in pairwise(order))


def final_event(tied: Sequence[Event]) -> Event | None:
    """The event whose payload is the object's state after all of `tied`, if it is certain."""
    if len(tied) == 1:
        return tied[0]
    if len(tied) > MAX_TIED_EVENTS:
        return None
    finals: list[Event] = []
    for order in permutations(tied):
        if _consistent(order) and all(order[-1] is not f for f in finals):
            finals.append(order[-1])
    if not finals:
        return None
    state = finals[0].payload["data"]["object"]
    return finals[0] if all(f.payload["data"]["object"] == state for f in finals[1:]) else None
