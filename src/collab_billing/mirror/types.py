"""`MirroredType`: what a mirrored Stripe object type declares (see `registry`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
from sqlalchemy import ColumnElement, Select, Table, Update, bindparam, select, update

from collab_billing.db.dialect import in_ids

if TYPE_CHECKING:
    from collab_billing.stripe_gateway import StripeGateway


def stripe_time(seconds: int | None) -> datetime | None:
    """A Stripe timestamp (Unix seconds; null or 0 for none) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC) if seconds else None


T = TypeVar("T")


@dataclass(frozen=True)
class MirroredType(Generic[T]):
    kind: str
    event_types: tuple[str, ...]
    object_type: type[T]
    table: Table
    key: str  # the column holding the object's Stripe id
    columns: Callable[[T], dict[str, Any]]  # the row's values, from the object
    object_id: Callable[[T], str]
    # The Stripe customer an object belongs to (its row gets `billing_customer_id`); None for
    # objects that belong to no customer.
    owner: Callable[[T], str] | None
    retrieve_path: str  # e.g. "/v1/subscriptions/{id}"
    list_path: str  # for resync and for catching up a newly linked customer
    list_params: dict[str, Any] = field(default_factory=dict)
    # For a type whose events carry only part of the object (entitlements' summary lists ten
    # at most): never written from an event's payload, always read from Stripe, with `fetch`
    # (gateway, object id) -> the object, instead of `retrieve_path`. Resync fetches it per
    # customer of ours.
    trust_payload: bool = True
    fetch: Callable[[Any, str], T] | None = None
    # Rows kept beside the object's own row (entitlements: one per feature), rewritten
    # with it: called with (session, [(object, our customer id)]) after the upsert.
    after_write: Callable[[Any, list[tuple[T, int | None]]], None] | None = None
    # For a type whose events may carry an object without some of its fields (a tiered
    # price's `tiers` are shown only when expanded): False for such an object, which the
    # applier then reads from Stripe (`retrieve_path` with `retrieve_params`) instead.
    payload_complete: Callable[[T], bool] | None = None
    retrieve_params: dict[str, Any] = field(default_factory=dict)
    # For a type Stripe can neither retrieve by id nor list (discounts): the object whose read
    # shows one (`shown_by`: from the object, e.g. "subscription:sub_..."), the read
    # (`retrieve_via`: gateway, object id, that -> the object, or it marked `deleted` when no
    # longer shown), and the objects of this type that an object listed from `list_path`
    # shows (`listed`).
    shown_by: Callable[[T], str] | None = None
    retrieve_via: Callable[[Any, str, str], T] | None = None
    listed: Callable[[bytes | msgspec.Raw], Iterable[T]] | None = None
    # Objects of this type shown by objects of another list than `list_path`'s (a customer's
    # own discount, on the customer): (gateway, the list's params) -> them.
    also_listed: Callable[[Any, dict[str, Any]], Iterable[T]] | None = None
    # For a type that keeps tombstones and whose lists (`list`) show every live object: the
    # rows such a list covers (a condition on `table`; discounts: those not of an item, which
    # the lists do not expand). Such a row, live, that a complete list did not show was
    # deleted while we were not reading its events: resync tombstones it (`unlisted`).
    listed_rows: Callable[[Table], ColumnElement[bool]] | None = None

    def needs_read(self, obj: T) -> bool:
        """Whether an event's object lacks fields the row needs (see `payload_complete`)."""
        return self.payload_complete is not None and not self.payload_complete(obj)

    def decode(self, raw: bytes | msgspec.Raw) -> T:
        return msgspec.json.decode(raw, type=self.object_type)

    def retrieve(self, gateway: StripeGateway, object_id: str) -> T:
        """The object as Stripe shows it now (`retrieve_path` with `retrieve_params`)."""
        path = self.retrieve_path.format(id=object_id)
        return self.decode(gateway.get(f"{self.kind}s.retrieve", path, **self.retrieve_params))

    def list(self, gateway: StripeGateway, **params: Any) -> Iterator[T]:
        """Every object Stripe lists (`list_path` with `list_params` and `params`)."""
        for raw in gateway.list_all(self.list_path, **{**self.list_params, **params}):
            if self.listed is None:
                yield self.decode(raw)
            else:
                yield from self.listed(raw)
        if self.also_listed is not None:
            yield from self.also_listed(gateway, params)

    def row(self, obj: T, as_of: int, billing_customer_id: int | None) -> dict[str, Any]:
        values = {self.key: self.object_id(obj), **self.columns(obj), "stripe_state_as_of": as_of}
        if self.owner is not None:
            values["billing_customer_id"] = billing_customer_id
        return values

    @property
    def keeps_tombstones(self) -> bool:
        """Rows of this type outlive the object: deletion is terminal and marks `deleted`."""
        return "deleted" in self.table.c

    def deletion(self, events: Sequence[Any]) -> Any | None:
        """The `*.deleted` event among `events`, for a type that keeps tombstones. Its object
        is the last state there will ever be: it is written, marked deleted, without reading
        Stripe again (which answers 404 for a deleted price or product)."""
        if not self.keeps_tombstones:
            return None
        return next((e for e in events if e.type in self._deleted_types), None)

    @property
    def _deleted_types(self) -> frozenset[str]:
        return frozenset(t for t in self.event_types if t.endswith(".deleted"))

    def stub(self, object_id: str) -> T:
        """What a 404 on a type that keeps tombstones means: the object was deleted."""
        return msgspec.json.decode(
            msgspec.json.encode({"id": object_id, "deleted": True}), type=self.object_type
        )

    def unlisted(
        self, as_of: int, billing_customer_id: int | None, *, of_the_second: bool = False
    ) -> Select[str]:
        """The live rows a complete list covers (`listed_rows`; of one customer of ours, if
        given) that are older than `as_of`: the list, read after that second, shows each of
        them unless it was deleted. A row of that second or newer may be of an object made
        after the list was read: it is left to its events, unless `of_the_second` (rows of
        that second too, for a caller that took their versions before the read and checks
        them under the rows' locks: `BatchWriter.tombstone_unshown`)."""
        assert self.listed_rows is not None and self.keeps_tombstones
        table = self.table
        mark = table.c.stripe_state_as_of
        statement = select(table.c[self.key]).where(
            self.listed_rows(table),
            table.c.deleted.is_(False),
            mark <= as_of if of_the_second else mark < as_of,
        )
        if billing_customer_id is not None:
            statement = statement.where(table.c.billing_customer_id == billing_customer_id)
        return statement

    def tombstone_unlisted(self, as_of: int, *, of_the_second: bool = False) -> Update:
        """Mark the rows of `unlisted` deleted as of `as_of` (execute with `{"ids": [...]}`),
        where still live and older than it (an event written since decides; `of_the_second`:
        or of that second, the caller having checked them unchanged since before the read);
        returns their keys and, if owned, customers."""
        table = self.table
        owner = [table.c.billing_customer_id] if self.owner is not None else []
        mark = table.c.stripe_state_as_of
        return (
            update(table)
            .where(in_ids(table.c[self.key]))
            .where(table.c.deleted.is_(False), mark <= as_of if of_the_second else mark < as_of)
            .values(**_tombstoned(table, as_of))
            .returning(table.c[self.key], *owner)
        )

    def rows_of_customer(self) -> Select[str, int]:
        """(key, version) of an owned type's rows of one customer of ours (execute with
        `{"id": billing_customer_id}`)."""
        table = self.table
        statement = select(table.c[self.key], table.c.stripe_state_version)
        return statement.where(table.c.billing_customer_id == bindparam("id"))

    def tombstone(self, object_id: str, as_of: int) -> Update:
        """Mark a row deleted, keeping what it last showed (Stripe shows nothing any more)."""
        return (
            update(self.table)
            .where(self.table.c[self.key] == object_id)
            .values(**_tombstoned(self.table, as_of))
        )


def _tombstoned(table: Table, as_of: int) -> dict[str, Any]:
    """The values of a row marked deleted as of `as_of` (a write: its version goes up)."""
    version = table.c.stripe_state_version
    return {"deleted": True, "stripe_state_as_of": as_of, "stripe_state_version": version + 1}
