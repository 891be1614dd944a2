"""How a deep backlog is cut into `created` slices, walked at once when Stripe is far.

A walk waits for each page before it can ask for the next (its cursor is that page's first
event): one page per round trip, ~650 events/s at 150 ms. When the round trip is long (a
distant Stripe: SLICING_ROUND_TRIP or more), slices of a deep backlog are walked at once,
a chain of requests per ROUND_TRIP_PER_CHAIN of round trip, as far as
STRIPE_REQUESTS_PER_SECOND allows. Not when it is short (applying a page's events takes
5-20 ms): walks on threads then only compete with the applying thread for the GIL and hold
more in memory (measured against a local emulator: 14% slower, +95 MB); nor when one walk
makes requests as fast as allowed: each slice costs up to two requests more, its anchor and
a last page part full. And only a backlog of about MIN_PAGES_PER_SLICE pages a slice is cut.
A walk of a later slice reads at most two windows of SLICE_WINDOW events ahead (memory: 8
walks holding full batches took a 200k drain to 283 MB); a slice larger than that waits for
its turn half read, so a deep backlog gains less (see docs/benchmarks.md, step 29).
"""

from __future__ import annotations

from collab_billing.reconcile.events import Event

FETCH_CHAINS = 8
SLICING_ROUND_TRIP = 0.05
ROUND_TRIP_PER_CHAIN = 0.0175
SLICES_PER_CHAIN = 2
MIN_PAGES_PER_SLICE = 10
SLICE_WINDOW = 500


def fetch_chains(round_trip: float, requests_per_second: float) -> int:
    """How many walks to run at once, by the round trip of a page (see the module's docstring)."""
    if round_trip < SLICING_ROUND_TRIP:
        return 1
    by_latency = int(round_trip / ROUND_TRIP_PER_CHAIN)
    return max(1, min(FETCH_CHAINS, by_latency, int(requests_per_second * round_trip)))


def slice_ends(cursor: int, newest_page: list[Event], chains: int) -> list[int | None]:
    """Where the slices of the backlog above `cursor` end (the last is open: None), by the
    density of its newest page; one slice when the backlog looks shallow or one chain of
    requests is all there is room for."""
    top = newest_page[0].created
    page_seconds = max(1, top - newest_page[-1].created)
    pages = (top - cursor) / page_seconds
    count = min(chains * SLICES_PER_CHAIN, int(pages // MIN_PAGES_PER_SLICE), top - cursor)
    if chains < 2 or count < 2:
        return [None]
    width = (top - cursor) / count
    return [*(cursor + int(width * n) for n in range(1, count)), None]
