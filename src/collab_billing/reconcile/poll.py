"""Read new events from Stripe's Events API and apply them oldest first, in bounded memory.

The first request reads the newest page from the cursor (less an overlap): when idle, that is
the whole poll. Otherwise the range below it is read in `created` windows, several at once,
each applied and committed in order, so a backlog makes progress window by window and a
failure loses at most the windows being read (docs/reconciliation.md, "Reading events").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from collab_billing import metrics
from collab_billing.db.engine import read_only, transaction, writers_waited
from collab_billing.mirror.registry import (
    MIRROR_FORMAT,
    RELEVANT_TYPES,
    relisted_since,
    types_filter,
)
from collab_billing.reconcile import ledger, resync, tuning
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.groups import ApplyStats
from collab_billing.reconcile.windows import (
    Range,
    Window,
    batches,
    cut,
    density_of,
    expected_events,
    split_overflowed,
)
from collab_billing.state import outbox
from collab_billing.state.access import rules_of
from collab_billing.state.document import DOCUMENT_FORMAT
from collab_billing.stripe_gateway import PAGE_EVENTS, Event, StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.events import EventPage

log = logging.getLogger(__name__)


class NeedsResync(Exception):
    """Events we have not read may be gone from Stripe: rebuild from the list endpoints."""


@dataclass
class DrainReport:
    requests: int = 0
    events_seen: int = 0
    windows: int = 0
    concurrency: int = 1
    stats: ApplyStats = field(default_factory=ApplyStats)
    interrupted: bool = False  # stopped (SIGTERM) before the end: not a complete poll
    seconds: float = 0.0
    # Events found unprocessed though older than the webhook grace: webhooks missed them.
    missed_by_webhooks: int = 0


class Poller:
    def __init__(
        self,
        factory: sessionmaker[Session],
        gateway: StripeGateway,
        applier: Applier,
        clock: Callable[[], float] = time.time,
        types: Sequence[str] | None = None,
        give_way: Callable[[float], None] | None = None,
    ) -> None:
        """`give_way(seconds)`: called between batches; returns when the batches may go on."""
        self.factory = factory
        self.gateway = gateway
        self.applier = applier
        self.clock = clock
        self.types = frozenset(types if types is not None else RELEVANT_TYPES)
        # Unfiltered pages (more types than Stripe's filter takes) hold other events too: they
        # count for paging and window sizes, and are left out before the ledger and the applier.
        self.types_filter = types_filter(sorted(self.types))
        self._lock = threading.Lock()
        self.give_way = give_way
        self._next_refresh = 0.0

    def check_retention(self) -> int:
        """Raise `NeedsResync` when events we have not read may have expired on Stripe; else
        return the second it judged at (a poll that follows starts from it: a clock moved on
        meanwhile, as a test clock moves `dev`'s, leaves its gap to the next judgement)."""
        with read_only(self.factory) as session:
            last_drain = ledger.read_int_state(session, ledger.LAST_DRAIN_AT)
        if last_drain is None:
            raise NeedsResync("never synced")
        now = int(self.clock())
        age = now - last_drain
        if age > tuning.RETENTION_SECONDS:
            raise NeedsResync(f"last complete poll {age / 86_400:.1f} days ago")
        if age > tuning.WARN_AFTER_SECONDS:
            log.warning("no complete poll for %.1f days", age / 86_400)
        return now

    def drain(
        self,
        stop: threading.Event | None = None,
        leading: Callable[[], bool] | None = None,
        polled_from: int | None = None,
    ) -> DrainReport:
        """Apply every new event (and the due retries); with `stop` set, or `leading()` false
        (the leadership lost), return after the current batch's transaction. `polled_from`:
        when the poll counts as started (default: now; `check_retention`'s judgement)."""
        leading = leading or (lambda: True)
        started = time.monotonic()
        # Once the poll completes, every event created before it started is applied.
        polled_from = int(self.clock()) if polled_from is None else polled_from
        report = DrainReport()
        self._relist_rows_of_another_format()
        self._recompute_documents_of_another_format()
        self._refresh_documents()  # those a poll killed mid-way left stale
        with read_only(self.factory) as session:
            cursor = ledger.read_int_state(session, ledger.CURSOR) or 0
            due = ledger.due_pending_events(session, int(self.clock()))
        if due:
            report.stats.add_counts(self.applier.apply([], pending=due))
        low = max(0, cursor - tuning.OVERLAP_SECONDS)
        requested = time.monotonic()
        newest = self._list(report, created_gte=low)
        latency = time.monotonic() - requested
        if newest.has_more and not self._applied_already(newest.events, cursor):
            boundary = newest.events[-1].created  # its oldest second may go on below the page
            report.concurrency = self._concurrency(latency)
            density = len(newest.events) / max(1, newest.events[0].created - boundary + 1)
            backlog = density * (boundary + 1 - low)
            target = self._target(backlog, report.concurrency)
            windows = self._windows(cursor, low, boundary + 1, density, target, report)
            for window in windows:
                if self._apply(window.events, report, stop, leading):
                    break
            top = [event for event in newest.events if event.created > boundary]
        else:
            top = newest.events
        if not report.interrupted:
            self._apply(top, report, stop, leading)
        if not report.interrupted:
            with transaction(self.factory) as session:
                ledger.write_state(session, ledger.LAST_DRAIN_AT, polled_from)
            self._refresh_documents()
        report.seconds = time.monotonic() - started
        return report

    def _target(self, backlog: float, concurrency: int) -> int:
        """Events a window is sized for: fewer when several are read at once, so that a
        backlog makes enough windows to keep them busy; the fewest when requests are not
        what limits the drain (`tuning` says why)."""
        if concurrency == 1:
            return tuning.WINDOW_EVENTS
        if self._requests_to_spare():
            return tuning.MIN_WINDOW_EVENTS
        wanted = min(backlog / (2 * concurrency), tuning.MAX_EVENTS_IN_FLIGHT / concurrency)
        return max(tuning.MIN_WINDOW_EVENTS, min(tuning.WINDOW_EVENTS, int(wanted)))

    def _concurrency(self, latency: float) -> int:
        """Windows read at once: enough requests in flight to use the request budget, and at
        least two, so that the next window is being read while one is applied."""
        rate = self.gateway.requests_per_second
        if self._requests_to_spare():
            rate = tuning.APPLY_EVENTS_PER_SECOND / PAGE_EVENTS
        wanted = math.ceil(rate * latency * 1.2)
        return max(2, min(tuning.MAX_WINDOWS_IN_FLIGHT, wanted))

    def _requests_to_spare(self) -> bool:
        """The request budget reads pages faster than the database applies them."""
        return self.gateway.requests_per_second * PAGE_EVENTS > tuning.APPLY_EVENTS_PER_SECOND

    def _list(self, report: DrainReport, **filters: int | str) -> EventPage:
        """One page; a request that fails for a reason that may pass (the network, 5xx, 429
        beyond the gateway's retries) is made again after a pause: a long walk must not
        start over for one failed request."""
        for attempt in range(tuning.PAGE_ATTEMPTS):
            try:
                return self._list_once(report, **filters)
            except StripeGatewayError as error:
                status = error.http_status
                transient = status is None or status in (409, 429) or status >= 500
                if attempt == tuning.PAGE_ATTEMPTS - 1 or not transient:
                    raise
                time.sleep(min(tuning.PAGE_RETRY_SECONDS * 2**attempt, 30))
        raise AssertionError("unreachable")

    def _list_once(self, report: DrainReport, **filters: int | str) -> EventPage:
        page = self.gateway.list_events(types=self.types_filter, **filters)  # type: ignore[arg-type]
        for event_type, count in Counter(event.type for event in page.events).items():
            metrics.EVENTS_FETCHED.labels(event_type).inc(count)
        with self._lock:
            report.requests += 1
            report.events_seen += len(page.events)
        return page

    # -- windows ----------------------------------------------------------------------------

    def _windows(
        self,
        cursor: int,
        start: int,
        end: int,
        density: float,
        target: int,
        report: DrainReport,
    ) -> Iterator[Window]:
        """The windows covering `[start, end)`, oldest first, each read completely; several
        read at once with `report.concurrency`. `slots` holds, in `created` order, windows
        being read (futures) and ranges not yet cut; the first `concurrency` are kept being
        read, and a window that overflows is split in its place (`windows.split_overflowed`).
        The overlap below the cursor is one window."""
        slots: deque[Future[Window] | Range] = deque([Range(start, end)])
        with ThreadPoolExecutor(report.concurrency, thread_name_prefix="events") as pool:

            def read(window: Window) -> Future[Window]:
                return pool.submit(self._read_window, window, cursor, target, report)

            if start < cursor < end:
                slots = deque([read(Window(start, cursor)), Range(cursor, end)])

            try:
                while slots:
                    cut(slots, report.concurrency, max(1, int(target / max(density, 1e-9))), read)
                    head = slots[0]
                    assert isinstance(head, Future)
                    if not head.done():  # until the head or another window is read
                        reading = [s for s in slots if isinstance(s, Future) and not s.done()]
                        wait(reading, return_when=FIRST_COMPLETED)
                    density = split_overflowed(slots, density)
                    head = slots[0]
                    if isinstance(head, Future) and head.done():
                        slots.popleft()
                        done = head.result()
                        density = density_of(done, density)
                        report.windows += 1
                        yield done
            finally:
                for slot in slots:
                    if isinstance(slot, Future):
                        slot.cancel()

    def _read_window(self, window: Window, cursor: int, target: int, report: DrainReport) -> Window:
        """Every event of the window, top-down. Stops early at a page applied already
        (`_applied_already`), and marks the window overflowed (unless it is one second) once
        it holds, or by the density of its pages so far will hold, more than
        `tuning.MAX_WINDOW_FACTOR` times the target."""
        limit = target * tuning.MAX_WINDOW_FACTOR
        after = window.after
        while True:
            page = self._list(
                report,
                created_gte=window.start,
                created_lt=window.end,
                **({"starting_after": after} if after else {}),
            )
            window.events.extend(page.events)
            if not page.has_more or not page.events:
                return window
            if self._applied_already(page.events, cursor):
                return window
            if expected_events(window) > limit and window.end - window.start > 1:
                window.overflowed = True
                return window
            after = page.events[-1].id

    def _applied_already(self, events: Sequence[Event], cursor: int) -> bool:
        """A page that reaches down to the cursor's second and holds no event unprocessed:
        what lies below it was applied by earlier polls, but for late arrivals (the overlap
        and webhooks catch those), so the pages below are not read: one request when idle."""
        if not events or events[-1].created > cursor:
            return False
        ids = {event.id for event in events if event.type in self.types}
        if not ids:
            return True
        with read_only(self.factory) as session:
            return ledger.processed(session, ids) == ids

    def _relist_rows_of_another_format(self) -> None:
        """Rows mirrored by a release that kept fewer columns are listed again from Stripe
        (`mirror.registry.MIRROR_FORMAT`), once."""
        with read_only(self.factory) as session:
            stored = ledger.read_int_state(session, ledger.MIRROR_FORMAT)
        if stored != MIRROR_FORMAT:
            written = resync.relist(self.factory, self.gateway, relisted_since(stored))
            log.info("rows of an older release listed again", extra={"rows": written})
            with transaction(self.factory) as session:
                ledger.write_state(session, ledger.MIRROR_FORMAT, MIRROR_FORMAT)

    def _recompute_documents_of_another_format(self) -> None:
        """Documents stored by a release that computed them otherwise, or under another
        `BILLING_PAST_DUE_GRACE_DAYS` (their graces' ends), are marked stale: the refresh that
        follows recomputes them (and notifies those that changed)."""
        with read_only(self.factory) as session:
            stored = ledger.read_int_state(session, ledger.DOCUMENT_FORMAT)
            stored_grace = ledger.read_int_state(session, ledger.DOCUMENT_GRACE)
            grace = int(rules_of(session).grace.total_seconds())
        if stored != DOCUMENT_FORMAT or stored_grace != grace:
            outbox.mark_every_document_stale(self.factory)
            with transaction(self.factory) as session:
                ledger.write_state(session, ledger.DOCUMENT_FORMAT, DOCUMENT_FORMAT)
                ledger.write_state(session, ledger.DOCUMENT_GRACE, grace)

    def _refresh_documents(self) -> None:
        """The state documents the batches marked stale, recomputed and notified a
        transaction at a time, giving way to webhooks between them like the batches."""
        if self.applier.defer_documents:
            give_way = self.give_way or (lambda _seconds: None)
            between = partial(give_way, tuning.MAX_GIVE_WAY_SECONDS)
            outbox.refresh_every_stale(self.factory, tuning.BATCH_EVENTS, between)
        self._next_refresh = time.monotonic() + tuning.REFRESH_DOCUMENTS_SECONDS

    def _batch_size(self) -> int:
        """Shorter transactions while other writers (webhooks) wait for SQLite's one writer."""
        engine = self.factory.kw["bind"]
        if writers_waited(engine, tuning.CONTENDED_SECONDS):
            return tuning.CONTENDED_BATCH_EVENTS
        return tuning.BATCH_EVENTS

    # -- applying ---------------------------------------------------------------------------

    def _apply(
        self,
        newest_first: list[Event],
        report: DrainReport,
        stop: threading.Event | None,
        leading: Callable[[], bool],
    ) -> bool:
        """Apply a window's events in batches of whole seconds; True when stopped."""
        relevant = [event for event in reversed(newest_first) if event.type in self.types]
        events = sorted(relevant, key=lambda event: event.created)
        planned = list(batches(events, self._batch_size()))
        for index, batch in enumerate(planned):
            # The cursor only ever stands on a second applied whole: a batch that ends inside
            # a second (one too large for a batch) leaves it on the second before.
            following = planned[index + 1 : index + 2]
            whole = not following or following[0][0].created > batch[-1].created
            stats = self.applier.apply(batch, cursor=batch[-1].created - (0 if whole else 1))
            late = self.clock() - tuning.WEBHOOK_GRACE_SECONDS
            report.missed_by_webhooks += sum(
                1 for e in batch if e.created < late and stats.by_event.get(e.id) != "duplicate"
            )
            report.stats.add_counts(stats)
            if time.monotonic() >= self._next_refresh:
                self._refresh_documents()
            if self.give_way is not None:
                self.give_way(tuning.MAX_GIVE_WAY_SECONDS)
            if (stop is not None and stop.is_set()) or not leading():
                report.interrupted = True
                return True
        if newest_first and (not events or events[-1].created < newest_first[0].created):
            # The window's newest events were of other types: the cursor passes them, or
            # every later poll would read them again.
            with transaction(self.factory) as session:
                ledger.advance_cursor(session, newest_first[0].created)
        return False
