"""Linking Stripe customers to our users, inside a batch's transaction (`BatchWriter`).

A customer we do not know is linked to the user it names (`metadata.github_user_id`, or a
Checkout's `client_reference_id`), or remembered unmatched (`mirror.customers`). Events of its
objects skipped while it was not ours are not replayed: a customer linked late is linked with
its objects as listed from Stripe (`catch_up`), in the same transaction.

Every function runs in the writer's transaction. A Stripe read it lacks is named in
`writer.needed` (its result taken as not read yet); the applier reads it and runs the
transaction again. Those linked are added to `writer.known`, those remembered unmatched to
`writer.unmatched`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from collab_billing.db.dialect import insert
from collab_billing.mirror import customers
from collab_billing.mirror.registry import MIRRORED_TYPES
from collab_billing.reconcile import ledger
from collab_billing.reconcile.groups import Group
from collab_billing.reconcile.reads import NeedsStripe, Read
from collab_billing.state import outbox

if TYPE_CHECKING:
    from collab_billing.reconcile.batch import BatchWriter


def link(writer: BatchWriter, candidates: Sequence[customers.Candidate]) -> dict[str, int]:
    """Link unknown customers to the users they name; remember the others unmatched. One
    that a read of this batch showed deleted is a deletion (`StripeReads.shows_deleted`):
    its event, older, showed it live; linked, its objects could not be read."""
    candidates = [
        (cid, gid, deleted or writer.reads.shows_deleted(cid)) for cid, gid, deleted in candidates
    ]
    linked = customers.link_or_remember(writer.session, candidates)
    writer.known.update(linked)
    writer.unmatched.update(cid for cid, _, _ in candidates if cid not in linked)
    return linked


def catch_up(writer: BatchWriter, cid: str, our_id: int, as_of: int, version: int) -> None:
    """Write the objects of a customer linked late, as listed from Stripe, as of `as_of`
    where they have no row. `version`: its unmatched row's before the link (`NO_ROW`: none);
    a list read before a skip raised it is read again (`StripeReads.get_since`;
    docs/reconciliation.md, "Reads")."""
    owned = writer.reads.get_since(Read("owned", cid), version, writer.needed, _never)
    for mirrored in MIRRORED_TYPES:
        objects = owned.get(mirrored.kind, []) if owned is not None else []
        if mirrored.after_write is not None:  # listed in full just now: replaces rows
            writer.store(mirrored, [(obj, as_of, our_id) for obj in objects])
            continue
        rows = [mirrored.row(obj, as_of, our_id) for obj in objects]
        if rows:
            statement = insert(writer.session, mirrored.table).on_conflict_do_nothing()
            writer.session.execute(statement, rows)
            outbox.mark_rows(writer.session, mirrored.key, rows)


def adopt(writer: BatchWriter, seen: Mapping[str, int], as_of: int) -> dict[str, int]:
    """Link these unmatched customers, read from Stripe with their objects after their rows
    were seen at these versions, with their objects as of `as_of` (`catch_up`). One linked
    meanwhile (no row now) is left; one whose row changed since is read again. Returns
    those linked."""
    ledger.lock_objects(writer.session, list(seen))
    now = customers.unmatched_versions(writer.session, list(seen))
    read = []
    for cid, version in now.items():
        customer = writer.reads.get_since(Read("customer", cid), version, writer.needed, _never)
        read.append(customer)
        # Its objects in the same round; not a deleted customer's (it is not linked, and
        # Stripe may refuse that read: the poll would fail at every try).
        if customer is None or not customer.deleted:
            writer.reads.get_since(Read("owned", cid), version, writer.needed, _never)
    if writer.needed:
        raise NeedsStripe(writer.needed)
    linked = link(writer, [candidate_of(customer) for customer in read])
    for cid, our_id in linked.items():
        catch_up(writer, cid, our_id, as_of, now[cid])
    return linked


def owners_known(writer: BatchWriter, groups: Sequence[Group]) -> dict[str, str]:
    """Each group's owning customer (object id -> Stripe customer id), with the customers
    we did not know looked up: linked if they name a user, else remembered unmatched."""
    owners = {g.object_id: owner for g in groups if (owner := g.owner) is not None}
    unknown = set(owners.values()) - set(writer.known) - writer.unmatched
    writer.known.update(customers.known(writer.session, unknown))
    unknown -= set(writer.known)
    writer.unmatched |= customers.unmatched(writer.session, unknown)
    to_read = unknown - writer.unmatched
    read = [writer.reads.get(Read("customer", cid), writer.needed) for cid in to_read]
    link(writer, [candidate_of(customer) for customer in read if customer is not None])
    return owners


def candidate_of(customer: customers.Customer) -> customers.Candidate:
    return customer.id, customers.github_user_id_named(customer), customer.deleted


def _never(_: Any) -> bool:
    """A list of a customer's objects is never shown already (`StripeReads.get_since`)."""
    return False
