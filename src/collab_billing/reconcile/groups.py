"""A batch's events grouped by the object they change, each group's order settled where its
events' payloads can settle it (see `ordering`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collab_billing.db import mirror
from collab_billing.reconcile.events import Event, object_id, object_kind
from collab_billing.reconcile.ordering import final_event
from collab_billing.reconcile.stripe_reads import Early


@dataclass
class Group:
    kind: str
    object_id: str
    events: list[Event]  # in `created` order
    attempts: int = 0  # failures so far, when the group comes back from pending
    # A subscription's, set by `settle`: the event whose payload is its state after all of
    # `events` (None: not certain), and that state once built.
    final: Event | None = None
    final_state: mirror.SubscriptionState | None = None

    @property
    def newest_created(self) -> int:
        return self.events[-1].created

    def last_second(self) -> list[Event]:
        """The events of the newest second: their order is not given."""
        if len(self.events) == 1:
            return self.events
        newest = self.newest_created
        return [event for event in self.events if event.created == newest]

    def settle(self) -> Group:
        if self.kind == "subscription":
            self.final = final_event(self.last_second())
        return self

    def state(self) -> mirror.SubscriptionState:
        """`final`'s subscription as of the newest second (raises if it cannot be read)."""
        if self.final_state is None:
            if self.final is None:
                raise ValueError("the newest second's events cannot be ordered")
            final = self.final.object
            self.final_state = mirror.SubscriptionState.from_fields(final, self.newest_created)
        return self.final_state


@dataclass
class Batch:
    """Events prepared for `Applier.apply` ahead of it: grouped by object, ties settled where
    their payloads can, and the Stripe reads the others need started."""

    events: list[Event]
    groups: list[Group]
    early: Early


_KIND_RANK = {"customer": 0, "subscription": 1, "other": 2}


def group_events(events: Sequence[Event]) -> list[Group]:
    """Groups of `events` (in `created` order), settled, in first-seen order; customers first,
    so that links exist for subscriptions."""
    groups: dict[tuple[str, str], Group] = {}
    kinds: dict[str, str] = {}
    for event in events:
        kind = kinds.get(event.type) or kinds.setdefault(event.type, object_kind(event.type))
        key = (kind, object_id(event))
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(kind, key[1], [])
        group.events.append(event)
    settled = [group.settle() for group in groups.values()]
    return sorted(settled, key=lambda group: _KIND_RANK[group.kind])


def unsettled(groups: Sequence[Group]) -> list[str]:
    """The subscriptions whose newest second holds events their payloads cannot order."""
    return [
        group.object_id for group in groups if group.kind == "subscription" and group.final is None
    ]
