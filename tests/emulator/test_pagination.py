"""Property tests: the indexed event paging equals a brute-force filter of the whole log."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import overload

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stripe_emulator.events import Event, EventLog
from stripe_emulator.pagination import page_positions

TYPES = ["customer.created", "customer.updated", "customer.subscription.updated", "x.y"]


def build(spec: list[tuple[int, int]]) -> EventLog:
    log = EventLog()
    created = 1000
    for number, (step, type_index) in enumerate(spec):
        created += step
        log.append(Event(f"evt_{number}", TYPES[type_index], created, {}))
    return log


def brute(log: EventLog, types: list[str] | None, gte: int | None, lt: int | None) -> list[str]:
    def keep(event: Event) -> bool:
        if types is not None and not any(
            event.type.startswith(t[:-1]) if t.endswith("*") else event.type == t for t in types
        ):
            return False
        return (gte is None or event.created >= gte) and (lt is None or event.created < lt)

    return [event.id for event in reversed(log.events) if keep(event)]


@settings(max_examples=300, deadline=None)
@given(
    spec=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=0, max_size=40),
    types=st.none() | st.lists(st.sampled_from([*TYPES, "customer.*", "nope"]), min_size=1),
    gte=st.none() | st.integers(1000, 1060),
    lt=st.none() | st.integers(1000, 1080),
    limit=st.integers(1, 7),
    cursor=st.none() | st.tuples(st.sampled_from(["after", "before"]), st.integers(0, 39)),
)
def test_pages_match_brute_force(
    spec: list[tuple[int, int]],
    types: list[str] | None,
    gte: int | None,
    lt: int | None,
    limit: int,
    cursor: tuple[str, int] | None,
) -> None:
    log = build(spec)
    expected = brute(log, types, gte, lt)
    after = before = None
    if cursor is not None and spec:
        position = cursor[1] % len(spec)
        after, before = (position, None) if cursor[0] == "after" else (None, position)
        # Restrict the model to the cursor's side, like Stripe.
        expected = [
            event_id
            for event_id in expected
            if (after is None or int(event_id[4:]) < after)
            and (before is None or int(event_id[4:]) > before)
        ]
    page, has_more = log.page(
        types=types,
        created_gte=gte,
        created_lt=lt,
        oldest=0,
        after=after,
        before=before,
        limit=limit,
    )
    got = [event.id for event in page]
    if before is None:
        assert got == expected[:limit]
    else:  # the `limit` items just newer than the cursor, still newest first
        assert got == expected[-limit:] if expected else got == []
    assert has_more == (len(expected) > limit)


class CountingPositions(Sequence[int]):
    """The positions 0..n-1, counting how many of them a page reads."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> list[int]: ...
    def __getitem__(self, index: int | slice) -> int | list[int]:
        values = range(self.n)[index]
        if isinstance(values, range):
            self.read += len(values)
            return list(values)
        self.read += 1
        return values


@pytest.mark.parametrize("predicate", [None, lambda position: True], ids=["indexed", "filtered"])
@pytest.mark.parametrize(
    "cursor", [{}, {"after": 600_000}, {"before": 300_000}], ids=["first", "after", "before"]
)
def test_a_page_reads_about_one_page_of_positions_whatever_the_size(
    predicate: Callable[[int], bool] | None, cursor: dict[str, int]
) -> None:
    positions = CountingPositions(1_000_000)
    page, has_more = page_positions(
        [positions],
        0,
        positions.n,
        after=cursor.get("after"),
        before=cursor.get("before"),
        limit=100,
        keep=predicate,
    )
    assert len(page) == 100 and has_more
    assert positions.read <= 101 + 2 * 20  # the page, its extra one, and two bisects
