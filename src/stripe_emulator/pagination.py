"""Cursor pagination over creation-ordered positions, O(page) rather than O(n).

Every collection keeps its objects in creation order, so an object's position is its cursor.
A page walks positions newest-first from the cursor (or oldest-first from an `ending_before`
cursor, then reverses), testing an optional predicate, and stops as soon as it has `limit + 1`
matches (the extra one only tells `has_more`). With a predicate that rarely fails this is
O(limit); with a selective predicate it degrades to a scan from the cursor, which is the
documented trade-off for filters that have no index (e.g. `status` on subscriptions).
Without a predicate (the event log's type index) no walk is needed: each sequence's
`limit + 1` positions next to the cursor are sliced out (two bisects) and the few slices
sorted together, all in C.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from stripe_emulator.errors import StripeError, not_found

Positions = Sequence[int]


def _descending(seq: Positions, lo: int, hi: int) -> Iterator[int]:
    index = bisect_left(seq, hi) - 1
    while index >= 0:
        position = seq[index]
        if position < lo:
            return
        yield position
        index -= 1


def _ascending(seq: Positions, lo: int, hi: int) -> Iterator[int]:
    index = bisect_left(seq, lo)
    end = len(seq)
    while index < end:
        position = seq[index]
        if position >= hi:
            return
        yield position
        index += 1


def page_positions(
    seqs: list[Positions],
    lo: int,
    hi: int,
    *,
    after: int | None,
    before: int | None,
    limit: int,
    keep: Callable[[int], bool] | None = None,
) -> tuple[list[int], bool]:
    """Positions of one page, newest first, and whether more exist beyond it.

    `seqs` are ascending position sequences (e.g. one per event type) whose union is the
    collection; only positions in [lo, hi) count. `after`/`before` are cursor positions.
    """
    if keep is None:
        return _page_of_slices(seqs, lo, hi, after=after, before=before, limit=limit)
    if before is not None:
        lo = max(lo, before + 1)
        iterators = [_ascending(seq, lo, hi) for seq in seqs]
        merged = iterators[0] if len(iterators) == 1 else heapq.merge(*iterators)
    else:
        if after is not None:
            hi = min(hi, after)
        iterators = [_descending(seq, lo, hi) for seq in seqs]
        merged = iterators[0] if len(iterators) == 1 else heapq.merge(*iterators, reverse=True)
    found: list[int] = []
    for position in merged:
        if keep is None or keep(position):
            found.append(position)
            if len(found) > limit:
                break
    has_more = len(found) > limit
    del found[limit:]
    if before is not None:
        found.reverse()
    return found, has_more


def _page_of_slices(
    seqs: list[Positions], lo: int, hi: int, *, after: int | None, before: int | None, limit: int
) -> tuple[list[int], bool]:
    """`page_positions` without a predicate: the page lies within each sequence's `limit + 1`
    positions nearest the cursor, so only those are merged."""
    want = limit + 1
    found: list[int] = []
    if before is not None:
        lo = max(lo, before + 1)
        for seq in seqs:
            start = bisect_left(seq, lo)
            found.extend(seq[start : min(bisect_left(seq, hi), start + want)])
        found.sort()
    else:
        if after is not None:
            hi = min(hi, after)
        for seq in seqs:
            end = bisect_left(seq, hi)
            found.extend(seq[max(bisect_left(seq, lo), end - want) : end])
        found.sort(reverse=True)
    has_more = len(found) > limit
    if before is not None:
        found = found[:limit]
        found.reverse()
    else:
        del found[limit:]
    return found, has_more


class OrderedIds:
    """Ids in creation order with O(1) id -> position."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.positions: dict[str, int] = {}

    def append(self, object_id: str) -> int:
        position = len(self.ids)
        self.ids.append(object_id)
        self.positions[object_id] = position
        return position

    def __len__(self) -> int:
        return len(self.ids)

    def cursor(self, object_id: str | None, kind: str, param: str) -> int | None:
        if object_id is None:
            return None
        position = self.positions.get(object_id)
        if position is None:
            raise not_found(kind, object_id, param)
        return position


def check_cursors(starting_after: str | None, ending_before: str | None) -> None:
    if starting_after is not None and ending_before is not None:
        raise StripeError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            code="parameters_exclusive",
            param="ending_before",
        )
