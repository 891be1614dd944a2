"""A batch's events grouped by the object they change (`group_events`), and the outcomes of
applying them (`ApplyStats`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from collab_billing.mirror import customers
from collab_billing.mirror.registry import BY_EVENT_TYPE, MirroredType
from collab_billing.reconcile.ordering import final_event
from collab_billing.reconcile.reads import Read
from collab_billing.stripe_gateway import Event, EventShapeError


@dataclass
class ApplyStats:
    """Outcomes of a batch by (outcome, event type), and each event's outcome by id."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    by_event: dict[str, str] = field(default_factory=dict)
    stripe_reads: int = 0

    def count(self, outcome: str, events: Sequence[Event]) -> None:
        for event in events:
            self.outcomes[(outcome, event.type)] += 1
            self.by_event[event.id] = outcome

    def total(self, outcome: str) -> int:
        return sum(n for (name, _), n in self.outcomes.items() if name == outcome)

    def add_counts(self, other: ApplyStats) -> None:
        """`other`'s counts, not its events' outcomes (a drain's would grow without bound)."""
        self.outcomes.update(other.outcomes)
        self.stripe_reads += other.stripe_reads

    def merge(self, other: ApplyStats) -> None:
        self.add_counts(other)
        self.by_event.update(other.by_event)


@dataclass
class Group:
    """The events of one object in a batch, in `created` order."""

    kind: str  # "customer", a mirrored type's kind, or "other"
    object_id: str
    events: list[Event]
    mirrored: MirroredType[Any] | None = None
    attempts: int = 0  # failures so far, when the group comes back from pending
    # The event whose payload is the object's state after all of them (None: not certain).
    final: Event | None = None

    @property
    def newest_created(self) -> int:
        return self.events[-1].created

    @property
    def owner(self) -> str | None:
        """The Stripe customer the object belongs to (None: a type owned by no customer)."""
        mirrored = self.mirrored
        if mirrored is None or mirrored.owner is None:
            return None
        return mirrored.owner(self.events[-1].object_as(mirrored.object_type))

    @property
    def read(self) -> Read:
        """The read of the object from Stripe (a tie only Stripe settles)."""
        mirrored, via = self.mirrored, ""
        if mirrored is not None and mirrored.shown_by is not None:
            via = mirrored.shown_by(self.events[-1].object_as(mirrored.object_type))
        return Read("object", self.object_id, self.kind, via)

    def settle(self) -> Group:
        if self.mirrored is not None:
            newest = self.newest_created
            self.final = final_event([e for e in self.events if e.created == newest])
        return self


def group_events(events: Sequence[Event]) -> list[Group]:
    """`events` (in `created` order) by object, customers first so that links exist."""
    groups: dict[tuple[str, str], Group] = {}
    for event in events:
        kind, object_id, mirrored = _object_of(event)
        group = groups.get((kind, object_id))
        if group is None:
            group = groups[(kind, object_id)] = Group(kind, object_id, [], mirrored)
        group.events.append(event)
    return sorted((g.settle() for g in groups.values()), key=lambda g: g.kind != "customer")


def _object_of(event: Event) -> tuple[str, str, MirroredType[Any] | None]:
    """(kind, object id, mirrored type) of the object an event changes. An event whose object
    is not the shape Stripe documents stands alone (its own id) and fails when applied."""
    try:
        if event.type in customers.CUSTOMER_EVENT_TYPES:
            return "customer", customers.customer_id_of(event), None
        mirrored = BY_EVENT_TYPE.get(event.type)
        if mirrored is None:
            return "other", event.id, None
        return mirrored.kind, mirrored.object_id(event.object_as(mirrored.object_type)), mirrored
    except EventShapeError:
        return "malformed", event.id, None


def merge_sorted(first: Sequence[Event], second: Sequence[Event]) -> list[Event]:
    seen: set[str] = set()
    merged = []
    for event in [*first, *second]:
        if event.id not in seen:
            seen.add(event.id)
            merged.append(event)
    merged.sort(key=lambda event: event.created)  # stable: keeps the given order in a tie
    return merged
