"""Apply a batch of Stripe events to the database: exactly once, converging with Stripe.

Events are grouped by the object they change. For each subscription the newest event wins:
its payload is written when its order is certain (see `ordering`), and the object is re-read
from Stripe when it is not. `stripe_state_as_of` holds the `created` second of what a row
shows, so older events are recognised as stale whatever order they arrive in. The whole batch
and its `processed_stripe_events` rows commit in one transaction; if it fails, each object is
retried alone and the failing one is parked in `pending_stripe_events`, holding back its later
events while other objects go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import attrgetter

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db import ledger, mirror
from collab_billing.reconcile.events import Event, github_user_id_of
from collab_billing.reconcile.groups import Batch, Group, group_events, unsettled
from collab_billing.reconcile.stripe_reads import Early, StripeReads, start_reads
from collab_billing.stripe_gateway import StripeGateway
from collab_billing.stripe_objects import ObjectFields

log = logging.getLogger(__name__)
_TYPE_OF = attrgetter("type")
_ID_OF = attrgetter("id")

MAX_BACKOFF_SECONDS = 3600


@dataclass
class ApplyStats:
    """Outcome counts of one batch, by outcome and event type; with `by_event`, also each
    event's outcome by event id (for webhooks, which answer each delivery)."""

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    stripe_reads: int = 0
    by_event: dict[str, str] | None = None

    def count(self, outcome: str, events: Sequence[Event]) -> None:
        self.outcomes.update(zip(repeat(outcome), map(_TYPE_OF, events)))  # C loops, no genexpr
        if self.by_event is not None:
            self.by_event.update(zip(map(_ID_OF, events), repeat(outcome)))

    def total(self, outcome: str) -> int:
        return sum(n for (name, _), n in self.outcomes.items() if name == outcome)

    def merge(self, other: ApplyStats) -> None:
        self.outcomes.update(other.outcomes)
        self.stripe_reads += other.stripe_reads
        if self.by_event is not None and other.by_event is not None:
            self.by_event.update(other.by_event)


class Applier:
    def __init__(
        self,
        factory: sessionmaker[Session],
        gateway: StripeGateway | None,
        clock: Callable[[], float] = time.time,
        outcomes_by_event: bool = False,
    ) -> None:
        self.factory = factory
        self.gateway = gateway
        self.clock = clock
        self.outcomes_by_event = outcomes_by_event
        self._stripe = StripeReads(gateway)
        self._customer_ids = mirror.CustomerIds()

    # -- entry point ----------------------------------------------------------------------

    def prepare(self, events: list[Event], early: Early | None = None) -> Batch:
        """The work on `events` that needs no database, done ahead (on the read-ahead thread,
        while earlier batches are written): pass the result to `apply` with them. Reads
        already started for them (in `early`) are taken over, not made again."""
        groups = group_events(events)
        for group in groups:
            if group.final is not None:
                # A payload that is not a subscription's fails its object, in `apply`.
                with contextlib.suppress(Exception):
                    group.state()
        early = early or {}
        unread = [s for s in unsettled(groups) if s not in early]
        taken = {s: early[s] for s in unsettled(groups) if s in early}
        return Batch(events, groups, taken | start_reads(self.gateway, unread))

    def apply(
        self,
        events: Sequence[Event],
        pending: Sequence[ledger.PendingEvent] = (),
        cursor: int | None = None,
        prepared: Batch | None = None,
    ) -> ApplyStats:
        """Apply new `events` (sorted by `created`) and the due `pending` events, in one
        transaction; with `cursor`, the poll cursor moves up to it in the same transaction;
        `prepared` is what `prepare` made of these same events."""
        self._stripe = StripeReads(self.gateway, prepared.early if prepared else None)
        if prepared is not None and not pending:
            groups = prepared.groups
        else:
            groups = group_events(_merge_sorted([p.event for p in pending], events))
        if pending:
            attempts = {p.event.id: p.attempts for p in pending}
            for group in groups:
                group.attempts = max(attempts.get(e.id, 0) for e in group.events)
        retried = {p.object_id for p in pending}
        stats = self._new_stats()
        # Ties that only Stripe can settle are read before the write transaction, so that it
        # does not wait on Stripe (it still reads in the rare cases only its rows reveal).
        # Whether the row is newer still is known only in the transaction: such a read may
        # turn out not to be needed.
        self._stripe.prefetch(unsettled(groups))
        try:
            with self.factory() as session, session.begin():
                known = self._apply_batch(session, groups, retried, stats)
                if cursor is not None:
                    ledger.advance_cursor(session, cursor)
            self._customer_ids.remember(known)
        except Exception:
            log.warning("batch failed; applying its %d objects one by one", len(groups))
            self._customer_ids.forget()  # in case what failed was a row we remembered
            stats = self._new_stats()
            self._apply_one_by_one(groups, retried, stats)
            if cursor is not None:
                with self.factory() as session, session.begin():
                    ledger.advance_cursor(session, cursor)
        stats.stripe_reads = self._stripe.count
        return stats

    def _new_stats(self) -> ApplyStats:
        return ApplyStats(by_event={} if self.outcomes_by_event else None)

    def _apply_batch(
        self, session: Session, groups: Sequence[Group], retried: set[str], stats: ApplyStats
    ) -> dict[str, int]:
        """Returns the customers known to the transaction (Stripe id -> our id)."""
        _lock_objects(session, [group.object_id for group in groups])
        pending_ids = ledger.pending_object_ids(session)
        # Objects with an event waiting for a retry keep their order: later events wait too.
        blocked = pending_ids - retried
        self._hold_back(session, [g for g in groups if g.object_id in blocked], stats)
        ready = [g for g in groups if g.object_id not in blocked]
        return self._apply_groups(session, ready, stats, clear_pending=bool(pending_ids))

    def _apply_one_by_one(
        self, groups: Sequence[Group], retried: set[str], stats: ApplyStats
    ) -> None:
        for group in groups:
            group_stats = self._new_stats()
            try:
                with self.factory() as session, session.begin():
                    self._apply_batch(session, [group], retried, group_stats)
            except Exception as error:  # any failure parks the object; the loop goes on
                self._park(group, error, stats)
                continue
            stats.merge(group_stats)

    def _park(self, group: Group, error: Exception, stats: ApplyStats) -> None:
        message = _describe(error)
        delay = min(2.0 ** (group.attempts + 1), MAX_BACKOFF_SECONDS)
        log.error(
            "event failed",
            extra={
                "stripe_object_id": group.object_id,
                "stripe_event_id": group.events[0].id,
                "stripe_event_type": group.events[0].type,
                "attempts": group.attempts + 1,
                "error": message,
            },
        )
        with self.factory() as session, session.begin():
            ledger.record_pending(
                session, group.events, group.object_id, message, int(self.clock() + delay)
            )
        stats.count("failed", group.events)

    @staticmethod
    def _hold_back(session: Session, groups: Sequence[Group], stats: ApplyStats) -> None:
        for group in groups:
            ledger.record_pending(session, group.events, group.object_id, None, 0)
            stats.count("waiting", group.events)

    # -- one transaction ------------------------------------------------------------------

    def _apply_groups(
        self, session: Session, groups: Sequence[Group], stats: ApplyStats, clear_pending: bool
    ) -> dict[str, int]:
        """`groups` in the caller's transaction, with a fixed number of statements per batch:
        the ledger rows are written first (which tells the events processed already), the
        customers are read in one query, and the subscriptions are written in one (and a
        second look at the few it did not write). Returns the customers known to the
        transaction."""
        events = [event for group in groups for event in group.events]
        done = ledger.claim(session, events)
        fresh_groups = list(groups) if not done else self._without_done(groups, done, stats)
        known = self._known_customers(session, fresh_groups)
        self._apply_customers(
            session, [g for g in fresh_groups if g.kind == "customer"], known, stats
        )
        subscriptions = [g for g in fresh_groups if g.kind == "subscription"]
        # Counted by outcome once for the batch: counting each group took ~4% of a drain.
        outcomes = self._apply_subscriptions(session, subscriptions, known)
        outcomes["ignored"] = [
            e for g in fresh_groups if g.kind not in ("subscription", "customer") for e in g.events
        ]
        for outcome, counted in outcomes.items():
            stats.count(outcome, counted)
        if clear_pending:
            ledger.clear_pending(session, [event.id for event in events])
        return known

    @staticmethod
    def _without_done(groups: Sequence[Group], done: set[str], stats: ApplyStats) -> list[Group]:
        fresh_groups: list[Group] = []
        for group in groups:
            fresh = [event for event in group.events if event.id not in done]
            if len(fresh) < len(group.events):
                stats.count("duplicate", [e for e in group.events if e.id in done])
            if fresh:
                fresh_groups.append(Group(group.kind, group.object_id, fresh).settle())
        return fresh_groups

    def _known_customers(self, session: Session, groups: Sequence[Group]) -> dict[str, int]:
        """The groups' customers that are ours (Stripe id -> our id), read once for all."""
        subscriptions = [g for g in groups if g.kind == "subscription"]
        customer_ids = {g.object_id for g in groups if g.kind == "customer"}
        customer_ids.update(mirror.customer_id_of(g.events[-1].object) for g in subscriptions)
        return self._customer_ids.lookup(session, customer_ids)

    def _apply_customers(
        self, session: Session, groups: Sequence[Group], known: dict[str, int], stats: ApplyStats
    ) -> None:
        # Deletion is terminal on Stripe, so it wins whatever came before or after.
        deleted = [g for g in groups if any(e.type == "customer.deleted" for e in g.events)]
        mirror.mark_customers_deleted(session, [g.object_id for g in deleted])
        stats.count("applied", [e for g in deleted for e in g.events])
        deleted_ids = {g.object_id for g in deleted}
        new = [g for g in groups if g.object_id not in deleted_ids]
        stats.count("applied", [e for g in new if g.object_id in known for e in g.events])
        new = [g for g in new if g.object_id not in known]
        if not new:
            return
        github_ids = {g.object_id: github_user_id_of(g.events[-1].object) for g in new}
        users = mirror.user_ids_for_github_ids(
            session, [gid for gid in github_ids.values() if gid is not None]
        )
        links = [
            (users[gid], g.object_id)
            for g in new
            if (gid := github_ids[g.object_id]) is not None and gid in users
        ]
        linked = mirror.link_customers_if_free(session, links)
        known.update(linked)
        for group in new:
            if group.object_id not in linked:
                stats.count("unmatched", group.events)
                continue
            # Linked in the batch of its own `customer.created`: its subscriptions' events all
            # come after it (in this batch or later ones, and a webhook-delivered one linked
            # the customer by reading it), so none was dropped and none needs listing.
            if not any(e.type == "customer.created" for e in group.events):
                self._catch_up(session, group.object_id, known)
            stats.count("applied", group.events)

    def _link_customer(
        self, session: Session, customer_id: str, github_user_id: int | None, catch_up: bool
    ) -> bool:
        """Link a customer we did not know to its user; with `catch_up`, also take in the
        subscriptions whose events were skipped while the customer could not be matched."""
        user_id = mirror.user_id_for_github_id(session, github_user_id) if github_user_id else None
        if user_id is None or mirror.link_customer_if_free(session, user_id, customer_id) is None:
            return False
        if catch_up:
            self._catch_up(session, customer_id, mirror.customer_rows(session, [customer_id]))
        return True

    def _catch_up(self, session: Session, customer_id: str, known: dict[str, int]) -> None:
        """Take in the subscriptions of a newly linked customer that have no row yet."""
        states = [
            mirror.SubscriptionState.from_stripe(sub, 0)
            for sub in self._stripe.customer_subscriptions(customer_id)
        ]
        marks = mirror.subscription_watermarks(session, [s.stripe_subscription_id for s in states])
        mirror.upsert_subscriptions(
            session, [s for s in states if s.stripe_subscription_id not in marks], known
        )

    def _apply_subscriptions(
        self, session: Session, groups: Sequence[Group], known: dict[str, int]
    ) -> dict[str, list[Event]]:
        """Write each subscription's newest state where its row is older; returns the groups'
        events by outcome.

        A state certain from its payload is written over a row of an older second by one
        statement, which tells what it wrote, without reading the rows first. Only the
        groups it did not write, and those whose payload makes no state, are looked at with
        their rows' seconds: stale, or of the row's own second and so read from Stripe. A tie
        that only Stripe can settle is read first (early, mostly) and written over a row of
        its second too."""
        by_payload: list[tuple[Group, mirror.SubscriptionState]] = []
        by_stripe: list[tuple[Group, mirror.SubscriptionState]] = []
        second_look: list[Group] = []
        for group in groups:
            if group.final is None:
                by_stripe.append((group, self._read_state(group)))
                continue
            try:
                by_payload.append((group, group.state()))
            except Exception:  # a payload that is not a subscription's: fails, unless stale
                second_look.append(group)
        unmatched: set[str] = set()
        written = self._write(session, by_payload, known, unmatched, same_second=False)
        written |= self._write(session, by_stripe, known, unmatched, same_second=True)
        looked_at = written | unmatched
        second_look += [g for g, _ in by_payload if g.object_id not in looked_at]
        if second_look:
            marks = mirror.subscription_watermarks(session, [g.object_id for g in second_look])
            decided = [(g, self._decide(g, marks.get(g.object_id))) for g in second_look]
            states = [(g, state) for g, state in decided if state is not None]
            written |= self._write(session, states, known, unmatched, same_second=True)
        outcomes: dict[str, list[Event]] = defaultdict(list)
        for group in groups:
            if group.object_id in written:
                outcomes["applied"] += group.events
            else:
                outcomes["unmatched" if group.object_id in unmatched else "stale"] += group.events
        return outcomes

    def _write(
        self,
        session: Session,
        states: Sequence[tuple[Group, mirror.SubscriptionState]],
        known: dict[str, int],
        unmatched: set[str],
        same_second: bool,
    ) -> set[str]:
        """`mirror.upsert_newer` for the states whose customer is ours (linked now if need
        be); adds the others to `unmatched`."""
        ours: list[mirror.SubscriptionState] = []
        for group, state in states:
            if self._customer_is_ours(session, state.stripe_customer_id, known):
                ours.append(state)
            else:
                unmatched.add(group.object_id)
        return mirror.upsert_newer(session, ours, known, same_second)

    def _customer_is_ours(self, session: Session, customer_id: str, known: dict[str, int]) -> bool:
        if customer_id not in known:
            customer = ObjectFields.from_dict(self._stripe.customer(customer_id))
            if not customer.deleted:
                self._link_customer(session, customer_id, github_user_id_of(customer), True)
            known.update(mirror.customer_rows(session, [customer_id]))
        return customer_id in known

    def _decide(self, group: Group, mark: int | None) -> mirror.SubscriptionState | None:
        """The state to write over a row of second `mark` (None: no row), or None when every
        event is older than the row."""
        newest = group.newest_created
        if mark is not None and newest < mark:
            return None
        if mark != newest and group.final is not None:
            return group.state()
        return self._read_state(group)

    def _read_state(self, group: Group) -> mirror.SubscriptionState:
        fresh = self._stripe.subscription(group.object_id)
        return mirror.SubscriptionState.from_stripe(fresh, group.newest_created)


def _lock_objects(session: Session, object_ids: Sequence[str]) -> None:
    """On PostgreSQL, serialise writers of one object (poller and webhooks) for this transaction.

    Locks are taken in one sorted order, so two transactions can never wait on each other in a
    cycle. SQLite needs nothing: BEGIN IMMEDIATE already serialises all writers.
    """
    if not object_ids or not ledger.is_postgres(session):
        return
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(7341, k) FROM (SELECT DISTINCT hashtext(x) AS k "
            "FROM json_array_elements_text(CAST(:ids AS json)) AS x ORDER BY 1) s"
        ),
        {"ids": ledger.json_array(object_ids)},
    )


def _merge_sorted(first: Sequence[Event], second: Sequence[Event]) -> list[Event]:
    seen: set[str] = set()
    merged: list[Event] = []
    for event in [*first, *second]:
        if event.id not in seen:
            seen.add(event.id)
            merged.append(event)
    merged.sort(key=lambda event: event.created)  # stable: keeps the given order in a tie
    return merged


def _describe(error: Exception) -> str:
    text_ = f"{type(error).__name__}: {error}"
    return text_[:500]
