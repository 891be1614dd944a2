"""Read new events from Stripe's Events API and apply them oldest first, in bounded memory.

The list endpoint returns newest first. When little happened, the newest page holds it all
(one request when idle). A backlog is walked upward, page by page with `ending_before`, from the
newest event at or below the cursor: each event is read once and memory holds about one batch
per walk, whatever the backlog. A walk reads one page per round trip to Stripe, so a deep
backlog is cut into `created` slices (see `slicing`), walked at once and applied in order.
When no event is left at or below the cursor to start from, `created` windows `[low, high)`
are read top-down instead, each completely; a window holding more than `max_buffer` new events
is narrowed (by the density seen) and read again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db import ledger
from collab_billing.db.checkpoints import WalCheckpoints
from collab_billing.db.engine import is_sqlite, read_only, write_lock
from collab_billing.reconcile.apply import Applier, ApplyStats
from collab_billing.reconcile.batching import batches, start_of_last_second
from collab_billing.reconcile.events import RELEVANT_TYPES, Event
from collab_billing.reconcile.groups import Batch
from collab_billing.reconcile.memory import cyclic_gc_paused, release_memory
from collab_billing.reconcile.read_ahead import in_order, read_ahead
from collab_billing.reconcile.slicing import SLICE_WINDOW, fetch_chains, slice_ends
from collab_billing.stripe_gateway import EventPage, StripeGateway

log = logging.getLogger(__name__)

# Events can become visible in the list a little after their `created` second; re-reading
# this much below the cursor catches them, and the ledger absorbs the repeats.
OVERLAP_SECONDS = 60
MAX_BUFFER = 10_000
CHECK_EVERY = 2_000  # events read between two ledger queries, while above the cursor
BATCH_SIZE = 2_000
TURN_BATCH_SIZE = 500  # while other SQLite writers wait (see `Poller._batches`)
CONTENDED_SECONDS = 1.0
RETENTION_SECONDS = 30 * 86_400
WARN_AFTER_SECONDS = 25 * 86_400


class EventWalks(Protocol):
    """Who walks a backlog's event list: the gateway, or its worker (`walk_process`)."""

    def walk_events(
        self,
        *,
        types: Sequence[str],
        ending_before: str,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> Generator[EventPage, None, None]: ...


class NeedsResync(Exception):
    """Events we have not read may be gone from Stripe: rebuild from the list endpoints."""


@dataclass
class DrainReport:
    requests: int = 0
    events_seen: int = 0
    windows: int = 0
    stats: ApplyStats = field(default_factory=ApplyStats)
    newest_created: int | None = None
    interrupted: bool = False  # stopped (SIGTERM) before the end: not a complete poll
    seconds: float = 0.0
    slices: int = 1  # of the backlog, walked at once (see `slicing`)
    # How long the applying thread waited for the next window of events from Stripe: close to
    # `seconds` when reading bounds the drain (Stripe far away, its rate limit, the GIL shared
    # with the reading thread), close to 0 when writing does.
    read_wait_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


@dataclass
class Window:
    events: list[Event]
    high: int | None
    one_batch: bool = False  # its events were cut as one batch already
    batches: list[Batch] = field(default_factory=list)  # its events, prepared to apply


@dataclass(frozen=True)
class _Overflow:
    count: int
    oldest: int
    newest: int


class Poller:
    def __init__(
        self,
        factory: sessionmaker[Session],
        gateway: StripeGateway,
        applier: Applier,
        clock: Callable[[], float] = time.time,
        max_buffer: int = MAX_BUFFER,
        batch_size: int = BATCH_SIZE,
        walks: EventWalks | None = None,
    ) -> None:
        self.factory = factory
        self.gateway = gateway
        self.walks: EventWalks = walks or gateway  # a backlog's one walk (not its slices)
        self.applier = applier
        self.clock = clock
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self._engine: Engine = factory.kw["bind"]
        self._write_lock = write_lock(self._engine) if is_sqlite(self._engine) else None
        # Whether the walk's windows are checked against the ledger (see `_fresh_if_seen`).
        self._seen_processed = True

    def check_retention(self) -> int:
        """The cursor to poll from; raises NeedsResync when reading events cannot be trusted."""
        with self.factory() as session, session.begin():
            cursor = ledger.read_int_state(session, ledger.CURSOR)
            last_drain = ledger.read_int_state(session, ledger.LAST_DRAIN_AT)
        if cursor is None or last_drain is None:
            raise NeedsResync("the database has never synced with Stripe")
        # The cursor is the newest event seen; its age alone says nothing when nothing happened,
        # so the age that matters is how long ago we last read the event list completely.
        age = self.clock() - last_drain
        if age > RETENTION_SECONDS:
            raise NeedsResync(f"last complete poll was {age / 86400:.1f} days ago (retention: 30)")
        if age > WARN_AFTER_SECONDS:
            log.warning("last complete poll is %.1f days old; resync at 30", age / 86400)
        return cursor

    def drain(self, stop: threading.Event | None = None) -> DrainReport:
        """Apply every new event; with `stop` set, return after the current batch commits."""
        with cyclic_gc_paused():
            return self._drain(stop)

    def _drain(self, stop: threading.Event | None) -> DrainReport:
        started = time.monotonic()
        report = DrainReport()
        cursor = self.check_retention()
        self._seen_processed = True
        with self.factory() as session, session.begin():
            due = ledger.due_pending_events(session, int(self.clock()))
        windows = read_ahead(self._prepared(self._events(cursor, report)))
        checkpoints = WalCheckpoints(self._engine)
        with contextlib.closing(windows), contextlib.closing(checkpoints):
            unreleased = 0
            for window in _timed_waits(windows, report):
                report.windows += 1
                unreleased += len(window.events)
                if unreleased >= self.max_buffer:
                    release_memory()
                    unreleased = 0
                for batch in self._batches(window.batches):
                    newest = batch.events[-1].created
                    stats = self.applier.apply(batch.events, due, cursor=newest, prepared=batch)
                    checkpoints.batch_committed()
                    report.stats.merge(stats)
                    if stats.total("duplicate"):
                        self._seen_processed = True
                    due = []
                    report.newest_created = newest
                    if stop is not None and stop.is_set():
                        report.interrupted = True
                        report.seconds = time.monotonic() - started
                        return report
        if due:
            report.stats.merge(self.applier.apply([], due))
        with self.factory() as session, session.begin():
            ledger.write_state(session, ledger.LAST_DRAIN_AT, int(self.clock()))
        report.seconds = time.monotonic() - started
        return report

    def _batches(self, prepared: list[Batch]) -> Iterator[Batch]:
        """The prepared batches; smaller ones while other writers wait their turn on SQLite's
        one write lock (webhook deliveries): each then waits behind a short transaction."""
        lock = self._write_lock
        for batch in prepared:
            if lock is not None and lock.contended_within(CONTENDED_SECONDS):
                for events in batches(batch.events, TURN_BATCH_SIZE):
                    yield self.applier.prepare(events, batch.early)
            else:
                yield batch

    def _prepared(self, windows: Iterator[Window]) -> Iterator[Window]:
        """`windows`, cut into batches prepared to apply (on the read-ahead thread, so that
        this work, and the Stripe reads it starts, overlap the writes of the windows before)."""
        for window in windows:
            parts = [window.events] if window.one_batch else batches(window.events, self.batch_size)
            window.batches = [self.applier.prepare(events) for events in parts if events]
            yield window

    def _events(self, cursor: int, report: DrainReport) -> Iterator[Window]:
        """Every new event, in windows that the caller applies in order.

        A backlog costs two requests more than its pages: the newest page (which showed there
        is more) and the anchor. Events that became visible late, below the anchor but within
        the overlap, are caught by reading the overlap top-down before walking up."""
        low = max(0, cursor - OVERLAP_SECONDS)  # a valid timestamp, after an empty resync too
        started = time.monotonic()
        newest = self._list(report, created_gte=low)
        round_trip = time.monotonic() - started
        if not newest.has_more or newest.events[-1].created <= cursor:
            # Nothing, or little, is new: read down from this page to the cursor.
            yield from self._windows(low, cursor, report, first=newest)
            return
        anchor = self._list(report, created_lt=cursor + 1, limit=1).events
        if not anchor:
            yield from self._windows(low, cursor, report, first=newest)
            return
        yield from self._windows(low, cursor, report, until=cursor + 1)
        chains = fetch_chains(round_trip, self.gateway.requests_per_second)
        highs = slice_ends(cursor, newest.events, chains)
        if len(highs) == 1:
            yield from self._walk(anchor[0].id, cursor, report, walks=self.walks)
            return
        report.slices = len(highs)
        first = partial(self._walk, anchor[0].id, cursor, report, highs[0], SLICE_WINDOW)
        others = [
            partial(self._walk_slice, anchor[0].id, low, high, report)
            for low, high in pairwise(highs)
            if low is not None
        ]
        # Room for a window and the end of its slice: a finished slice frees its thread.
        yield from in_order([first, *others], chains, depth=2)

    def _walk_slice(
        self, anchor: str, low: int, high: int | None, report: DrainReport
    ) -> Iterator[Window]:
        """The events of `[low, high)`, walked up from the newest event below `low` (the
        slice's own anchor; `anchor`, at the cursor, if there is none)."""
        below = self._list(report, created_lt=low, limit=1).events
        anchor = below[0].id if below else anchor
        yield from self._walk(anchor, low, report, high, SLICE_WINDOW)

    def _walk(
        self,
        anchor: str,
        cursor: int,
        report: DrainReport,
        high: int | None = None,
        window: int | None = None,
        walks: EventWalks | None = None,
    ) -> Iterator[Window]:
        """The events listed above `anchor` (below `high`), oldest first (as the SDK's
        reverse auto-pagination reads them), in windows of `window` events (one batch). The
        newest second read so far is held back: the next page may continue it."""
        size = window or self.batch_size
        ascending: list[Event] = []
        pages = (walks or self.gateway).walk_events(
            types=RELEVANT_TYPES, ending_before=anchor, created_gte=cursor, created_lt=high
        )
        for page in _counted(pages, report):
            ascending.extend(reversed(page.events))
            if not page.has_more or not page.events:
                break
            complete = start_of_last_second(ascending)
            if complete < size:
                continue
            ready = list(batches(ascending[:complete], size))
            # A short last batch waits for more: it would cost a transaction of its own.
            rest = ready.pop() if len(ready[-1]) < size else []
            for batch in ready:
                yield Window(self._fresh_if_seen(batch), None, one_batch=True)
            ascending = rest + ascending[complete:]
        if ascending:
            yield Window(self._fresh(ascending), None)

    def _fresh_if_seen(self, events: list[Event]) -> list[Event]:
        """`_fresh(events)` while this drain meets processed events, `events` otherwise.

        A walk's events are new unless webhooks (or an earlier poll) got to them first, and
        webhooks deliver the newest events, which the walk's last window (always checked)
        holds. Elsewhere a backlog is mostly unprocessed: after a check that finds nothing,
        windows go to the applier unchecked, whose ledger write recognises any processed event
        as a duplicate, and a duplicate there turns the checks back on. On PostgreSQL at 1M
        events the checks were ~13 ms of the server's time per window (9% of the drain)."""
        if not self._seen_processed:
            return events
        fresh = self._fresh(events)
        self._seen_processed = len(fresh) < len(events)
        return fresh

    def _fresh(self, events: list[Event]) -> list[Event]:
        """`events` less those already processed (by an earlier poll or a webhook).

        A read that does not wait for SQLite's writer: this runs on the read-ahead thread
        while a batch is written, and an event that a running transaction is processing is
        recognised again by the applier's own check."""
        with read_only(self.factory) as session:
            done = ledger.processed_ids(session, [event.id for event in events])
        return [event for event in events if event.id not in done]

    def _windows(
        self,
        low: int,
        cursor: int,
        report: DrainReport,
        until: int | None = None,
        first: EventPage | None = None,
    ) -> Iterator[Window]:
        """Windows from `low` up (to `until`, or open-ended), each applied by the caller
        before the next is read. `first` is the open window's first page, if already read.

        The common case is one open window `[low, now)` that fits: one request when idle. When
        a window overflows, it is narrowed by the density seen; windows that come back small
        double in width, so a sparse stretch (days without events) costs few requests.
        """
        width: int | None = None  # None: open-ended
        newest_known: int | None = None
        while True:
            high = None if width is None else low + width
            if high is not None and newest_known is not None and high > newest_known:
                high = None  # past every event seen: the last window is open again
            if until is not None and (high is None or high > until):
                high = until
            window, overflow = self._read_window(low, high, cursor, report, first)
            first = None
            if overflow is not None:
                newest_known = max(newest_known or 0, overflow.newest)
                width = self._narrowed(low, overflow)
                continue
            yield window
            if window.high is None or window.high == until:
                return
            low = window.high
            if len(window.events) < self.max_buffer // 4:
                width = (width or 1) * 2

    def _read_window(
        self,
        low: int,
        high: int | None,
        cursor: int,
        report: DrainReport,
        first: EventPage | None = None,
    ) -> tuple[Window, _Overflow | None]:
        """All new events of `[low, high)`, or an overflow report if there are too many.

        Pages newer than the cursor are checked against the ledger CHECK_EVERY events at a
        time (one query, not one per page); a page that reaches the cursor is checked at once,
        since it decides whether to read on."""
        buffered: list[Event] = []
        unchecked: list[Event] = []

        def flush() -> list[Event]:
            fresh = self._fresh(unchecked)
            buffered.extend(fresh)
            unchecked.clear()
            return fresh

        for page in self._pages(low, high, report, first if high is None else None):
            unchecked.extend(page)
            reaches_cursor = page[-1].created <= cursor
            if not reaches_cursor and len(unchecked) < CHECK_EVERY:
                continue
            fresh = flush()
            page_ids = {event.id for event in page} if reaches_cursor else set()
            if reaches_cursor and not any(event.id in page_ids for event in fresh):
                break  # reached events handled by an earlier poll
            if len(buffered) <= self.max_buffer:
                continue
            oldest, newest = buffered[-1].created, buffered[0].created
            if oldest > low:
                # Narrowing can help only if the window spans more than one second of events.
                return _window([], high), _Overflow(len(buffered), oldest, newest)
        if unchecked:
            flush()
        return _window(buffered, high), None

    def _narrowed(self, low: int, overflow: _Overflow) -> int:
        """The next width: at most up to (not including) the oldest second seen, since
        everything from there up overflowed the buffer and what lies below must be applied
        first; and, by the density seen, about half a buffer of events, so that a deep backlog
        is not read again from the top once per buffer."""
        per_second = overflow.count / max(1, overflow.newest - overflow.oldest + 1)
        by_density = int(self.max_buffer / 2 / per_second)
        return max(1, min(overflow.oldest - low, by_density))

    def _list(self, report: DrainReport, **filters: Any) -> EventPage:
        page = self.gateway.list_events(types=RELEVANT_TYPES, **filters)
        _count(report, page)
        return page

    def _pages(
        self, low: int, high: int | None, report: DrainReport, first: EventPage | None = None
    ) -> Iterator[list[Event]]:
        starting_after: str | None = None
        while True:
            if first is not None:
                page, first = first, None
            else:
                page = self._list(
                    report, created_gte=low, created_lt=high, starting_after=starting_after
                )
            if page.events:
                yield page.events
            if not page.has_more or not page.events:
                return
            starting_after = page.events[-1].id


def _count(report: DrainReport, page: EventPage) -> None:
    with report.lock:  # slices are walked on several threads
        report.requests += 1
        report.events_seen += len(page.events)


def _counted(pages: Generator[EventPage, None, None], report: DrainReport) -> Iterator[EventPage]:
    with contextlib.closing(pages):  # a walk left early lets go of its connection at once
        for page in pages:
            _count(report, page)
            yield page


def _timed_waits(windows: Iterator[Window], report: DrainReport) -> Iterator[Window]:
    """`windows`, the time spent waiting for each added to `report.read_wait_seconds`."""
    while True:
        started = time.monotonic()
        window = next(windows, None)
        report.read_wait_seconds += time.monotonic() - started
        if window is None:
            return
        yield window


def _window(newest_first: list[Event], high: int | None) -> Window:
    events = newest_first[::-1]
    events.sort(key=lambda event: event.created)  # stable: keeps Stripe's tie order
    return Window(events, high)
