"""What the applier needs to read from Stripe, read outside its transactions.

A transaction that needs a read raises `NeedsStripe` naming it and rolls back; the reads are
made with no transaction open, `PARALLEL_READS` at a time, and the transaction runs again
(docs/reconciliation.md, "Applying a batch"). Any read may be repeated: Stripe's current
object is never older than the events listed before it was read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from collab_billing.mirror import customers
from collab_billing.mirror.registry import MIRRORED_TYPES, MirroredType
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError

PARALLEL_READS = 4


@dataclass(frozen=True)
class Read:
    """One read: `what` is "object" (`kind` is the mirrored type; `via`, for a type Stripe
    cannot retrieve by id, the object that shows it: `MirroredType.shown_by`), "customer", or
    "owned" (every mirrored object of customer `object_id`, by kind; or, when Stripe shows the
    customer deleted, the customer: `owned_or_deleted`)."""

    what: str
    object_id: str
    kind: str = ""
    via: str = ""


class NeedsStripe(Exception):
    def __init__(self, reads: set[Read]) -> None:
        super().__init__(f"{len(reads)} Stripe reads needed")
        self.reads = reads


# `StripeReads.rows`: no row of the object was seen before the read.
NO_ROW = -1


class StripeReads:
    """The reads of one batch, each made at most once (or again, when a row of the read's own
    second was written since it was made: `get_since`)."""

    def __init__(self, gateway: StripeGateway | None) -> None:
        self.gateway = gateway
        self._done: dict[Read, Any] = {}
        self.count = 0
        # The version (`stripe_state_version`) of the row a read is for, seen before the read
        # was made (`NO_ROW`: none); for the reads of a customer linked late, its unmatched
        # row's. Set by whoever asks for the read, before it is made.
        self.rows: dict[Read, int] = {}

    def get_since(
        self, read: Read, version: int, needed: set[Read], shown: Callable[[Any], bool]
    ) -> Any:
        """The result of `read`, to be written over a row of the read's own second now at
        `version`: only a read made since the row was at that version, or one the row shows
        already (`shown`: writing it changes nothing). Another is made again (None: added to
        `needed`). For a customer linked late, `version` is its unmatched row's
        (`linking.catch_up`). Why: docs/reconciliation.md, "Reads"."""
        if read in self._done and self.rows.get(read) != version:
            result = self._done[read]
            if not isinstance(result, StripeGatewayError) and shown(result):
                self.rows[read] = version
            else:
                del self._done[read]
        if read not in self._done:
            self.rows[read] = version
        return self.get(read, needed)

    def fetch(self, reads: Iterable[Read]) -> None:
        """Make these reads now (a failed one fails, when used, only the object needing it)."""
        missing = [read for read in set(reads) if read not in self._done]
        if not missing:
            return
        if len(missing) == 1:
            self._done[missing[0]] = self._read_or_error(missing[0])
        else:
            with ThreadPoolExecutor(min(PARALLEL_READS, len(missing))) as pool:
                for read, result in zip(
                    missing, pool.map(self._read_or_error, missing), strict=True
                ):
                    self._done[read] = result
        self.count += len(missing)

    def get(self, read: Read, needed: set[Read]) -> Any:
        """The result of `read`; if not made yet, it is added to `needed` and None returned."""
        if read not in self._done:
            needed.add(read)
            return None
        result = self._done[read]
        if isinstance(result, StripeGatewayError):
            raise result
        return result

    def _read_or_error(self, read: Read) -> Any:
        try:
            return self._read(read)
        except StripeGatewayError as error:
            return error

    def _read(self, read: Read) -> Any:
        if self.gateway is None:
            raise StripeGatewayError("not_configured", "STRIPE_API_KEY is not set", None)
        if read.what == "customer":
            return customers.retrieve(self.gateway, read.object_id)
        if read.what == "owned":
            return owned_or_deleted(self.gateway, read.object_id)
        mirrored = _by_kind(read.kind)
        if mirrored.fetch is not None:
            return mirrored.fetch(self.gateway, read.object_id)
        if mirrored.retrieve_via is not None:
            return mirrored.retrieve_via(self.gateway, read.object_id, read.via)
        try:
            return mirrored.retrieve(self.gateway, read.object_id)
        except StripeGatewayError as error:
            if error.http_status == 404 and mirrored.keeps_tombstones:
                return mirrored.stub(read.object_id)
            raise

    def shows_deleted(self, customer_id: str) -> bool:
        """Whether a read made of the customer, or of its objects, showed it deleted."""
        return any(
            isinstance(result := self._done.get(Read(what, customer_id)), customers.Customer)
            and result.deleted
            for what in ("customer", "owned")
        )


def owned_or_deleted(
    gateway: StripeGateway, customer_id: str
) -> dict[str, list[Any]] | customers.Customer:
    """Every mirrored object of the customer, by kind; or the customer, if a read of them
    failed and Stripe shows it deleted (deleted since its deletion was applied, if ever: Stripe
    may refuse to read a deleted customer's objects, as an expansion of its discount). Any
    other failure is raised."""
    try:
        return {m.kind: _owned(gateway, m, customer_id) for m in MIRRORED_TYPES if m.owner}
    except StripeGatewayError:
        customer = customers.retrieve(gateway, customer_id)
        if customer.deleted:
            return customer
        raise


def _owned(gateway: StripeGateway, mirrored: MirroredType[Any], customer_id: str) -> list[Any]:
    if mirrored.fetch is not None:
        return [mirrored.fetch(gateway, customer_id)]
    return list(mirrored.list(gateway, customer=customer_id))


def _by_kind(kind: str) -> MirroredType[Any]:
    return next(mirrored for mirrored in MIRRORED_TYPES if mirrored.kind == kind)
