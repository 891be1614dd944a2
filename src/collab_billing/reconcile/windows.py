"""The arithmetic of a drain's reading and applying: `created` windows (cut from ranges by
the density of events, split when they overflow) and batches of whole seconds. No I/O: the
poller (`reconcile/poll.py`) reads the windows and applies the batches."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import groupby

from collab_billing.reconcile.groups import group_events
from collab_billing.stripe_gateway import Event


@dataclass
class Window:
    start: int
    end: int  # exclusive
    events: list[Event] = field(default_factory=list)  # newest first, as listed
    overflowed: bool = False
    after: str | None = None  # read from below this event (`events` are those above it)


def density_of(window: Window, previous: float) -> float:
    """Events per second seen in a window just read (an empty one halves the estimate, so
    that a sparse stretch is crossed in few requests; the empty top of a split window, no
    time at all, leaves it as it was)."""
    if window.end <= window.start:
        return previous
    if not window.events:
        return previous / 2
    covered = window.end - (window.events[-1].created if window.overflowed else window.start)
    return len(window.events) / max(1, covered)


def expected_events(window: Window) -> float:
    """The events a window being read holds, by the density of what was read of it so far
    (complete seconds above the oldest one read)."""
    oldest = window.events[-1].created
    return len(window.events) * (window.end - window.start) / max(1, window.end - oldest)


@dataclass
class Range:
    start: int
    end: int
    # The part of its newest second read already (newest first), and the event to read on
    # from: they go to the range's newest window.
    events: list[Event] = field(default_factory=list)
    after: str | None = None
    # Read as one window whatever the density: nothing is known of it yet.
    whole: bool = False


def cut(
    slots: deque[Future[Window] | Range],
    concurrency: int,
    span: int,
    read: Callable[[Window], Future[Window]],
) -> None:
    """Have the first `concurrency` slots read, cutting windows of `span` seconds off the
    ranges among them."""
    position = 0
    while position < min(concurrency, len(slots)):
        slot = slots[position]
        if isinstance(slot, Range):
            if slot.whole or slot.end - slot.start <= span:
                window = Window(slot.start, slot.end, slot.events, after=slot.after)
            else:
                window = Window(slot.start, slot.start + span)
                rest = Range(window.end, slot.end, slot.events, slot.after)
                slots.insert(position + 1, rest)
            slots[position] = read(window)
        position += 1


def split(window: Window) -> tuple[Window, Range]:
    """An overflowed window: its complete seconds above the oldest one read, and the range
    below them still to read, which keeps what was read of that oldest second and reads on
    from the last event read. When all that was read is that one second (a burst), its
    density says nothing of the seconds below: the range is read as one window (`whole`)."""
    oldest = window.events[-1].created
    top = [event for event in window.events if event.created > oldest]
    partial = window.events[len(top) :]
    rest = Range(window.start, oldest + 1, partial, after=window.events[-1].id, whole=not top)
    return Window(oldest + 1, window.end, top), rest


def split_overflowed(slots: deque[Future[Window] | Range], density: float) -> float:
    """Split each window read that overflowed (`split`), in its place among `slots`, and
    return the density of events they showed. A window is split as soon as it is read, not
    when it reaches the head: its rest is then read beside the windows before it."""
    position = 0
    while position < len(slots):
        slot = slots[position]
        if isinstance(slot, Future) and slot.done() and slot.exception() is None:
            window = slot.result()
            if window.overflowed:
                density = density_of(window, density)
                top, rest = split(window)
                slots[position] = rest
                slots.insert(position + 1, ready(top))
        position += 1
    return density


def ready(window: Window) -> Future[Window]:
    future: Future[Window] = Future()
    future.set_result(window)
    return future


def batches(events: Sequence[Event], size: int) -> Iterator[list[Event]]:
    """`events` (sorted by `created`) in batches of about `size`, cut between seconds: the
    events of one object in one second must be applied together to be ordered. A second of
    more than `size` events is cut between objects (one transaction over all of them would
    take a lock per object on PostgreSQL, from a lock table of a few thousand)."""
    batch: list[Event] = []
    for _, of_second in groupby(events, key=lambda event: event.created):
        second = list(of_second)
        if batch and len(batch) + len(second) > size:
            yield batch
            batch = []
        if len(second) <= size:
            batch.extend(second)
            continue
        yield from _by_object(second, size)
    if batch:
        yield batch


def _by_object(second: list[Event], size: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for group in group_events(second):  # customers first
        if batch and len(batch) + len(group.events) > size:
            yield batch
            batch = []
        batch.extend(group.events)
    if batch:
        yield batch
