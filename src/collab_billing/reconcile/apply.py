"""Apply a batch of Stripe events to the database: exactly once, converging with Stripe.

Polled pages and webhook deliveries both come here (docs/reconciliation.md, "The path of one
event"); the rules, and why they converge, are in "Applying a batch". The batch and its
`processed_stripe_events` rows commit in one transaction, with no Stripe call inside it: a
transaction that needs a read names it and rolls back (`reads`), and runs again once the
read is made. If the batch fails, each object is applied alone and a failing one is parked
in `pending_stripe_events`, holding back its later events while others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from collab_billing import metrics
from collab_billing.db.engine import read_only, transaction
from collab_billing.mirror import customers
from collab_billing.mirror.entitlements import ENTITLEMENTS
from collab_billing.mirror.registry import MIRRORED_TYPES, MirroredType
from collab_billing.mirror.subscriptions import SUBSCRIPTIONS, may_change_features
from collab_billing.reconcile import ledger, linking
from collab_billing.reconcile.batch import BatchWriter, row_marks
from collab_billing.reconcile.groups import ApplyStats, Group, group_events, merge_sorted
from collab_billing.reconcile.reads import NO_ROW, NeedsStripe, Read, StripeReads
from collab_billing.state import outbox
from collab_billing.stripe_gateway import Event, StripeGateway

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 3600
# Transactions ("roll back, read from Stripe, run again") before a batch counts as failed:
# three with no other writer, and a margin for other writers' commits (docs/reconciliation.md,
# "Applying a batch").
MAX_ROUNDS = 8
# `rows_of_customer`'s kind for the version of a customer not ours (`apply_read`).
UNMATCHED = "unmatched"
T = TypeVar("T")


class Applier:
    def __init__(
        self,
        factory: sessionmaker[Session],
        gateway: StripeGateway | None,
        clock: Callable[[], float] = time.time,
        source: str = "poll",
        defer_documents: bool = False,
        read_features: bool = False,
    ) -> None:
        """`defer_documents`: the batches mark their users' state documents stale rather than
        recompute them (a catch-up: `state.outbox.defer_documents`). `read_features`: a
        subscription event that may change its customer's features brings the customer's
        active entitlements, read with it and written in its transaction (webhooks, so that a
        change is not notified first with the old features: docs/reconciliation.md, "Adding a
        mirrored type")."""
        self.factory = factory
        self.gateway = gateway
        self.clock = clock
        self.source = source
        self.defer_documents = defer_documents
        self.read_features = read_features

    def apply(
        self,
        events: Sequence[Event],
        pending: Sequence[ledger.PendingEvent] = (),
        cursor: int | None = None,
    ) -> ApplyStats:
        """Apply new `events` (sorted by `created`) and the due `pending` events together; with
        `cursor`, the poll cursor moves up to it in the same transaction."""
        started = time.perf_counter()
        groups = group_events(merge_sorted([p.event for p in pending], events))
        attempts = {p.event.id: p.attempts for p in pending}
        for group in groups:
            group.attempts = max((attempts.get(e.id, 0) for e in group.events), default=0)
        retried = {p.object_id for p in pending}
        reads = StripeReads(self.gateway)
        first, features = self._read_first(groups, reads)
        reads.fetch([*first, *(Read("object", cid, ENTITLEMENTS.kind) for cid in features)])
        try:
            stats = self._run(groups, retried, reads, cursor, features)
        except Exception as error:
            log.warning(
                "batch failed; applying its %d objects one by one",
                len(groups),
                extra={"error": f"{type(error).__name__}: {error}"[:500]},
            )
            stats = self._one_by_one(groups, retried, reads, cursor)
        stats.stripe_reads = reads.count
        metrics.APPLY_SECONDS.labels(self.source).observe(time.perf_counter() - started)
        metrics.record_outcomes(stats.outcomes)
        return stats

    def _read_first(
        self, groups: Sequence[Group], reads: StripeReads
    ) -> tuple[list[Read], dict[str, int]]:
        """The ties only Stripe settles, and the objects always read (entitlements), to read
        before the first transaction: of customers we know (one not known yet is read in a
        later round if it turns out ours), less those whose events were all processed
        already. With `read_features`, also the customers whose features to read, each with
        its subscription's newest second. Their rows' versions go to `reads.rows`."""
        tied = [g for g in groups if g.mirrored is not None and g.final is None]
        tied += [g for g in groups if _incomplete(g)]
        always = [g for g in groups if g.mirrored is not None and not g.mirrored.trust_payload]
        along = [g for g in groups if self.read_features and _may_change_features(g)]
        if not tied and not always and not along:
            return [], {}
        owners = {owner for g in tied + always + along if (owner := g.owner) is not None}
        with read_only(self.factory) as session:
            done = ledger.processed(
                session, [e.id for g in tied + always + along for e in g.events]
            )
            ours = customers.known(session, owners)

            def new(group: Group) -> bool:
                return any(e.id not in done for e in group.events)

            wanted = [g for g in tied if g.owner is None or g.owner in ours]
            wanted += [g for g in always if g.final is not None and g.owner in ours]
            wanted = [g for g in wanted if new(g)]
            features: dict[str, int] = {}
            for group in along:
                cid = group.owner
                if cid is not None and cid in ours and new(group):
                    features[cid] = max(features.get(cid, 0), group.newest_created)
            objects = [(g.mirrored, g.object_id, g.read) for g in wanted if g.mirrored]
            objects += [(ENTITLEMENTS, c, Read("object", c, ENTITLEMENTS.kind)) for c in features]
            _note_rows(session, objects, reads)
        return [g.read for g in wanted], features

    def _run(
        self,
        groups: Sequence[Group],
        retried: set[str],
        reads: StripeReads,
        cursor: int | None,
        features: Mapping[str, int] = MappingProxyType({}),
    ) -> ApplyStats:
        def write(session: Session) -> ApplyStats:
            if self.defer_documents:
                outbox.defer_documents(session)
            return BatchWriter(session, reads).apply(groups, retried, cursor, features)

        return self._rounds(reads, write)

    def _rounds(self, reads: StripeReads, write: Callable[[Session], T]) -> T:
        """`write` in a transaction, run again after each round of reads it asks for;
        `RuntimeError` after `MAX_ROUNDS`."""
        for _ in range(MAX_ROUNDS):
            try:
                with transaction(self.factory) as session:
                    return write(session)
            except NeedsStripe as needs:
                reads.fetch(needs.reads)
        raise RuntimeError(f"still needed reads from Stripe after {MAX_ROUNDS} rounds")

    def _one_by_one(
        self, groups: Sequence[Group], retried: set[str], reads: StripeReads, cursor: int | None
    ) -> ApplyStats:
        stats = ApplyStats()
        for group in groups:
            try:
                stats.merge(self._run([group], retried, reads, None))
            except Exception as error:  # any failure parks the object; the others go on
                self._park(group, error, stats)
        if cursor is not None:
            with transaction(self.factory) as session:
                ledger.advance_cursor(session, cursor)
        return stats

    def _park(self, group: Group, error: Exception, stats: ApplyStats) -> None:
        message = f"{type(error).__name__}: {error}"[:500]
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
        with transaction(self.factory) as session:
            next_try = int(self.clock() + delay)
            ledger.record_pending(session, group.events, group.object_id, message, next_try)
        stats.count("failed", group.events)

    def apply_read(
        self,
        read: Sequence[tuple[MirroredType[Any], Sequence[Any]]],
        as_of: int,
        candidates: Sequence[customers.Candidate] = (),
        seen: Mapping[str, Mapping[str, int]] = MappingProxyType({}),
        unshown: Sequence[tuple[MirroredType[Any], Sequence[str]]] = (),
    ) -> int:
        """Objects read from Stripe just now, with no event (`sync`), written in one
        transaction by `BatchWriter.write_read`'s rule: `as_of` is a Stripe second no later
        than the reads, `seen` the rows' versions by kind (`rows_of_customer`, taken before
        the reads). `candidates`: unknown customers to link first, if still at the unmatched
        version seen (under `UNMATCHED`; else the next poll's adoption links them).
        `unshown`: live rows the reads would have shown and did not, marked deleted by the
        same rule. No ledger row is written: the objects' events still apply by the usual
        rules (docs/reconciliation.md, "Reads"). Returns the rows written."""
        ids = [cid for cid, _, _ in candidates]
        with transaction(self.factory) as session:
            # Every lock at once, in the one order all writers take them: taken type by type,
            # a batch holding one of a later type while it waits for one of ours deadlocks.
            objects = [mirrored.object_id(obj) for mirrored, objects in read for obj in objects]
            gone = [object_id for _, unshown_ids in unshown for object_id in unshown_ids]
            ledger.lock_objects(session, objects + gone + ids)
            step = BatchWriter(session, StripeReads(None))
            known = customers.known(session, ids)
            now, before = customers.unmatched_versions(session, ids), seen.get(UNMATCHED, {})
            unchanged = [c for c in candidates if now.get(c[0], NO_ROW) == before.get(c[0], NO_ROW)]
            linking.link(step, [c for c in unchanged if c[0] not in known])
            written = sum(
                step.write_read(mirrored, objects, as_of, seen.get(mirrored.kind, {}))
                for mirrored, objects in read
            )
            for mirrored, unshown_ids in unshown:
                step.tombstone_unshown(mirrored, unshown_ids, as_of, seen.get(mirrored.kind, {}))
            return written

    def rows_of_customer(self, stripe_customer_id: str) -> dict[str, dict[str, int]]:
        """The versions of a customer's rows, by kind and object id (`apply_read`'s `seen`:
        taken before the reads); of one not ours, its unmatched row's (under `UNMATCHED`)."""
        with read_only(self.factory) as session:
            our_id = customers.known(session, [stripe_customer_id]).get(stripe_customer_id)
            if our_id is None:
                return {UNMATCHED: customers.unmatched_versions(session, [stripe_customer_id])}
            return {
                mirrored.kind: dict(
                    session.execute(mirrored.rows_of_customer(), {"id": our_id}).all()
                )
                for mirrored in MIRRORED_TYPES
                if mirrored.owner is not None
            }

    def adopt(self, as_of: int) -> int:
        """Link the unmatched customers whose user has appeared since, with their objects
        (written as of `as_of`, where no row exists). Returns how many were linked."""
        with read_only(self.factory) as session:  # every poll asks: no write lock for it
            seen = customers.adoptable(session)  # the versions, before the reads
        if not seen:
            return 0
        reads = StripeReads(self.gateway)
        wanted = [Read(what, cid) for cid in seen for what in ("customer", "owned")]
        reads.rows.update({read: seen[read.object_id] for read in wanted})
        reads.fetch(wanted)
        linked = self._rounds(
            reads, lambda session: linking.adopt(BatchWriter(session, reads), seen, as_of)
        )
        return len(linked)


def _note_rows(
    session: Session,
    objects: Sequence[tuple[MirroredType[Any], str, Read]],
    reads: StripeReads,
) -> None:
    """`reads.rows`: the version of each object's row now (before the reads), or `NO_ROW`."""
    for mirrored in {mirrored.kind: mirrored for mirrored, _, _ in objects}.values():
        mine = [(object_id, read) for m, object_id, read in objects if m is mirrored]
        marks = row_marks(session, mirrored, [object_id for object_id, _ in mine])
        for object_id, read in mine:
            reads.rows[read] = marks[object_id][1] if object_id in marks else NO_ROW


def _incomplete(group: Group) -> bool:
    """A group whose final event's object lacks fields its row needs (read before writing)."""
    mirrored = group.mirrored
    if mirrored is None or group.final is None or mirrored.payload_complete is None:
        return False
    if mirrored.deletion(group.events) is not None:  # written from its payload, never read
        return False
    return mirrored.needs_read(group.final.object_as(mirrored.object_type))


def _may_change_features(group: Group) -> bool:
    return group.mirrored is SUBSCRIPTIONS and any(map(may_change_features, group.events))
