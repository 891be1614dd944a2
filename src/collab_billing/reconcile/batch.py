"""One batch of grouped events, written in one database transaction (`BatchWriter`).

A writer that lacks a Stripe read names it and raises `NeedsStripe`; the applier
(`reconcile/apply.py`) makes the read outside the transaction and runs it again. Sync and
resync write objects read from Stripe through the same writer (`write_read`). Customers it
does not know are linked, with their objects, by `reconcile/linking.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence, Set
from datetime import UTC, datetime
from functools import cache
from types import MappingProxyType
from typing import Any

from sqlalchemy import Select, Table, func, select
from sqlalchemy.orm import Session

from collab_billing.db.dialect import execute_rows, in_ids, insert_rows
from collab_billing.mirror import customers
from collab_billing.mirror.entitlements import ENTITLEMENTS
from collab_billing.mirror.registry import MIRRORED_TYPES, MirroredType
from collab_billing.reconcile import budget, ledger, linking, product_reads
from collab_billing.reconcile.groups import ApplyStats, Group
from collab_billing.reconcile.reads import NO_ROW, NeedsStripe, Read, StripeReads
from collab_billing.state import outbox
from collab_billing.stripe_gateway import Event, EventShapeError, StripeGatewayError

log = logging.getLogger(__name__)


class BatchWriter:
    """One batch in one transaction. Collects the Stripe reads it lacks in `needed`; if any,
    `apply` raises `NeedsStripe` (rolling the transaction back) once it has seen them all."""

    def __init__(self, session: Session, reads: StripeReads) -> None:
        self.session = session
        self.reads = reads
        self.needed: set[Read] = set()
        self.stats = ApplyStats()
        self.known: dict[str, int] = {}  # Stripe customer id -> our id
        self.unmatched: set[str] = set()
        # Our customers whose entitlements this batch wrote -> the newest second written.
        self.entitled: dict[int, int] = {}

    def apply(
        self,
        groups: Sequence[Group],
        retried: set[str],
        cursor: int | None,
        features: Mapping[str, int] = MappingProxyType({}),
    ) -> ApplyStats:
        """Apply `groups`; then write the active entitlements read for the customers in
        `features`, each as of its second (`write_features`)."""
        session = self.session
        # Owners too: a batch that skips an event of an object and one that links its owner
        # take turns (docs/reconciliation.md, "Reads").
        owners = [owner for group in groups if (owner := group.owner) is not None]
        objects = [group.object_id for group in groups]
        ledger.lock_objects(self.session, objects + owners + [*features])
        pending_ids = ledger.pending_object_ids(session)
        ready = self._hold_back(groups, pending_ids - retried)
        events = [event for group in ready for event in group.events]
        fresh = self._without_done(ready, ledger.claim(session, events))
        budget.count_transactions(session, [event for group in fresh for event in group.events])
        self._apply_customers([g for g in fresh if g.kind == "customer"])
        for mirrored in MIRRORED_TYPES:
            self._apply_mirrored(mirrored, [g for g in fresh if g.mirrored is mirrored])
        for group in fresh:
            if group.kind == "other":
                self.stats.count("ignored", group.events)
            elif group.kind == "malformed":  # fails this object (alone, in `_one_by_one`)
                raise EventShapeError(f"event {group.object_id}: not the shape Stripe documents")
        self.write_features(features)
        product_reads.list_product_features(self)
        if self.needed:
            raise NeedsStripe(self.needed)
        if pending_ids:
            ledger.clear_pending(session, [event.id for event in events])
        if cursor is not None:
            ledger.advance_cursor(session, cursor)
        return self.stats

    def _hold_back(self, groups: Sequence[Group], blocked: set[str]) -> list[Group]:
        """Objects with an event waiting for a retry keep their order: later events wait too
        (those processed already, as a poll's overlap, are duplicates)."""
        held = [group for group in groups if group.object_id in blocked]
        done = ledger.processed(self.session, [e.id for group in held for e in group.events])
        for group in held:
            self.stats.count("duplicate", [e for e in group.events if e.id in done])
            waiting = [e for e in group.events if e.id not in done]
            if waiting:
                ledger.record_pending(self.session, waiting, group.object_id, None, 0)
                self.stats.count("waiting", waiting)
        return [group for group in groups if group.object_id not in blocked]

    def _without_done(self, groups: Sequence[Group], done: set[str]) -> list[Group]:
        if not done:
            return list(groups)
        fresh_groups = []
        for group in groups:
            self.stats.count("duplicate", [e for e in group.events if e.id in done])
            fresh = [e for e in group.events if e.id not in done]
            if fresh:
                fresh_groups.append(
                    Group(group.kind, group.object_id, fresh, group.mirrored).settle()
                )
        return fresh_groups

    # -- customers ------------------------------------------------------------------------

    def _apply_customers(self, groups: Sequence[Group]) -> None:
        self.known.update(customers.known(self.session, [g.object_id for g in groups]))
        deleted = {
            g.object_id for g in groups if any(e.type == "customer.deleted" for e in g.events)
        }
        # Deletion is terminal on Stripe: it wins whatever came before or after.
        customers.tombstone(self.session, [cid for cid in deleted if cid in self.known])
        unknown = [g for g in groups if g.object_id not in self.known]
        versions = customers.unmatched_versions(self.session, [g.object_id for g in unknown])
        newly_linked = linking.link(
            self, [(g.object_id, named_user(g.events), g.object_id in deleted) for g in unknown]
        )
        for group in groups:
            our_id = self.known.get(group.object_id)
            if our_id is None:
                self.stats.count("unmatched", group.events)
                continue
            # Linked with its `customer.created`: none of its objects' events came before.
            if group.object_id in newly_linked and not any(
                e.type == "customer.created" for e in group.events
            ):
                version = versions.get(group.object_id, NO_ROW)
                linking.catch_up(self, group.object_id, our_id, group.newest_created, version)
            self.stats.count("applied", group.events)

    # -- mirrored objects -----------------------------------------------------------------

    def _apply_mirrored(self, mirrored: MirroredType[Any], groups: Sequence[Group]) -> None:
        if not groups:
            return
        owners = linking.owners_known(self, groups) if mirrored.owner else {}
        marks = self.watermarks(mirrored, [g.object_id for g in groups])
        written: list[tuple[Any, int, int | None]] = []
        deleted: set[str] = set()  # written from their `.deleted` event: marked deleted
        skipped: set[str] = set()  # owners not ours
        for group in groups:
            cid = owners.get(group.object_id)
            if cid is not None and cid not in self.known:
                self.stats.count("unmatched", group.events)
                skipped.add(cid)
                continue
            newest, (mark, version) = group.newest_created, marks.get(group.object_id, NO_MARK)
            if mark is not None and newest < mark:
                self.stats.count("stale", group.events)
                continue
            deletion = mirrored.deletion(group.events)
            if deletion is not None:
                obj = deletion.object_as(mirrored.object_type)
            else:
                tie = version if mark == newest else None
                our_id = self.known.get(cid or "")
                obj = self._event_object_or_read(mirrored, group, tie, our_id)
            if obj is None:
                continue
            self.stats.count("applied", group.events)
            if deletion is None and getattr(obj, "deleted", False):
                tombstone = mirrored.tombstone(group.object_id, newest)  # read back: gone
                self.session.connection().execute(tombstone)
                owner = {"billing_customer_id": self.known.get(cid or "")} if mirrored.owner else {}
                outbox.mark_rows(
                    self.session, mirrored.key, [{mirrored.key: group.object_id, **owner}]
                )
                continue
            if deletion is not None:
                deleted.add(group.object_id)
            written.append((obj, newest, self.known.get(cid or "")))
        customers.skipped(self.session, skipped)
        self.store(mirrored, written, deleted)

    def _event_object_or_read(
        self, mirrored: MirroredType[Any], group: Group, tie: int | None, our_id: int | None
    ) -> Any:
        """The group's final event's object or, when that cannot be trusted (no certain final
        event, a tie with the row, an incomplete payload), the object read from Stripe (None
        until read: `self.needed`). `tie`: the version of a row of the group's own second
        (None: older, or no row), which only a read made since may replace (`get_since`)."""
        final = None if group.final is None else group.final.object_as(mirrored.object_type)
        if tie is not None:

            def shown(obj: Any) -> bool:
                return self.shows(mirrored, group.object_id, obj, group.newest_created, our_id)

            return self.reads.get_since(group.read, tie, self.needed, shown)
        if final is None or not mirrored.trust_payload or mirrored.needs_read(final):
            return self.reads.get(group.read, self.needed)
        return final

    def store(
        self,
        mirrored: MirroredType[Any],
        written: list[tuple[Any, int, int | None]],
        deleted: Set[str] = frozenset(),
    ) -> None:
        """Write these (object, as of, our customer id): its rows (those of `deleted` marked
        so), and the rows beside them."""
        rows = []
        for obj, as_of, cid in written:
            row = mirrored.row(obj, as_of, cid)
            rows.append({**row, "deleted": True} if row[mirrored.key] in deleted else row)
        self.upsert(mirrored, rows)
        if mirrored is ENTITLEMENTS:
            for _, as_of, cid in written:
                if cid is not None:
                    self.entitled[cid] = max(self.entitled.get(cid, 0), as_of)
        if mirrored.after_write is not None and written:
            mirrored.after_write(self.session, [(obj, cid) for obj, _, cid in written])

    def write_read(
        self,
        mirrored: MirroredType[Any],
        chunk: Sequence[Any],
        as_of: int,
        seen: Mapping[str, int] = MappingProxyType({}),
    ) -> int:
        """Objects read now, written where their row is older than `as_of`, or of that second
        and still at its version in `seen` (taken before the reads); if owned, only where
        their customer is ours. `as_of`: a Stripe second no later than the reads
        (`read_may_replace`; docs/reconciliation.md, "Reads"). Returns the rows written."""
        ids = [mirrored.object_id(obj) for obj in chunk]
        ledger.lock_objects(self.session, ids)
        marks = self.watermarks(mirrored, ids)
        owners = {mirrored.object_id(o): mirrored.owner(o) for o in chunk} if mirrored.owner else {}
        self.known.update(customers.known(self.session, set(owners.values())))
        written = [
            (obj, as_of, self.known.get(owners.get(object_id, "")))
            for obj, object_id in zip(chunk, ids, strict=True)
            if read_may_replace(marks.get(object_id, NO_MARK), as_of, seen.get(object_id))
            and (not owners or owners[object_id] in self.known)
        ]
        self.store(mirrored, written)
        return len(written)

    def tombstone_unshown(
        self,
        mirrored: MirroredType[Any],
        object_ids: Collection[str],
        as_of: int,
        seen: Mapping[str, int] = MappingProxyType({}),
    ) -> int:
        """Mark deleted the rows of objects that a read made after second `as_of` would have
        shown and did not (they are gone), by `write_read`'s rule. Returns how many."""
        ledger.lock_objects(self.session, object_ids)
        marks = self.watermarks(mirrored, object_ids)
        gone = [i for i, mark in marks.items() if read_may_replace(mark, as_of, seen.get(i))]
        if not gone:
            return 0
        statement = mirrored.tombstone_unlisted(as_of, of_the_second=True)
        marked = [dict(row) for row in self.session.execute(statement, {"ids": gone}).mappings()]
        if marked:
            outbox.mark_rows(self.session, mirrored.key, marked)
        return len(marked)

    def write_features(self, features: Mapping[str, int]) -> None:
        """Customers' active entitlements, read with an event of theirs from second `as_of`
        (read after it: `write_read`'s rule holds). A failed read writes nothing: the
        entitlements' own event brings them."""
        for cid, as_of in features.items():
            read = Read("object", cid, ENTITLEMENTS.kind)
            try:
                summary = self.reads.get(read, self.needed)
            except StripeGatewayError:
                continue
            if summary is not None:
                seen = {cid: self.reads.rows[read]} if read in self.reads.rows else {}
                self.write_read(ENTITLEMENTS, [summary], as_of, seen)

    def shows(
        self, mirrored: MirroredType[Any], object_id: str, obj: Any, as_of: int, cid: int | None
    ) -> bool:
        """Whether the row of `object_id` shows `obj` already, as of `as_of` (writing it would
        change nothing). Never for a type whose rows are beside it (`after_write`), nor for an
        object read back deleted."""
        if mirrored.after_write is not None or getattr(obj, "deleted", False):
            return False
        row = mirrored.row(obj, as_of, cid)
        names = [name for name in row if name not in (mirrored.key, "billing_customer_id")]
        table = mirrored.table
        statement = select(*(table.c[name] for name in names))
        stored = self.session.execute(statement.where(table.c[mirrored.key] == object_id)).first()
        return stored is not None and all(
            _same(value, row[name]) for name, value in zip(names, stored, strict=True)
        )

    def watermarks(
        self, mirrored: MirroredType[Any], object_ids: Collection[str]
    ) -> dict[str, tuple[int, int]]:
        """Each row's (watermark, version)."""
        return row_marks(self.session, mirrored, object_ids)

    def upsert(self, mirrored: MirroredType[Any], rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        # One row per object (one statement may not update a row twice): the last one wins.
        rows = list({row[mirrored.key]: row for row in rows}.values())
        dialect = self.session.get_bind().dialect.name
        upsert = _upsert_statement(dialect, mirrored.table, mirrored.key, tuple(rows[0]))
        execute_rows(self.session.connection(), upsert, rows)
        # The users whose state documents read these rows get a notification on commit.
        outbox.mark_rows(self.session, mirrored.key, rows)


# The statements of a mirrored type are built once (`db/queries.py` says why).


@cache
def _watermarks_statement(table: Table, key: str) -> Select[str, int, int]:
    columns = (table.c[key], table.c.stripe_state_as_of, table.c.stripe_state_version)
    return select(*columns).where(in_ids(table.c[key]))


NO_MARK: tuple[None, None] = (None, None)  # no row


def _same(stored: Any, value: Any) -> bool:
    """A column's stored value and one about to be written are the same (SQLite gives back
    its times without their zone, UTC)."""
    if isinstance(stored, datetime) and stored.tzinfo is None:
        stored = stored.replace(tzinfo=UTC)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return bool(stored == value)


def row_marks(
    session: Session, mirrored: MirroredType[Any], object_ids: Collection[str]
) -> dict[str, tuple[int, int]]:
    """Each existing row's (watermark, version) among `object_ids`."""
    statement = _watermarks_statement(mirrored.table, mirrored.key)
    rows = session.execute(statement, {"ids": list(object_ids)})
    return {object_id: (as_of, version) for object_id, as_of, version in rows}


def read_may_replace(
    row: tuple[int, int] | tuple[None, None], as_of: int, seen: int | None
) -> bool:
    """Whether an object read from Stripe, no older than second `as_of`, may be written over
    this row (watermark, version): none, older than `as_of`, or of that second and still at
    the version `seen` before the read (docs/reconciliation.md, "Reads")."""
    mark, version = row
    return mark is None or mark < as_of or (mark == as_of and seen == version)


@cache
def _upsert_statement(dialect: str, table: Table, key: str, columns: tuple[str, ...]) -> Any:
    statement = insert_rows(dialect, table, columns)
    # An object never moves to another customer: the owner is left out of the update.
    kept = (key, "billing_customer_id")
    changed = {name: statement.excluded[name] for name in columns if name not in kept}
    changed["updated_at"] = func.now()
    changed["stripe_state_version"] = table.c.stripe_state_version + 1
    return statement.on_conflict_do_update(index_elements=[key], set_=changed)


def named_user(events: Sequence[Event]) -> int | None:
    """The GitHub user the newest of these customer events that names one names."""
    named = (customers.github_user_id_named(event) for event in reversed(events))
    return next((github_user_id for github_user_id in named if github_user_id), None)
