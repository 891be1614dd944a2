"""Objects the applier reads from Stripe: each once per batch, and ties read ahead.

A subscription whose newest second holds events that their payloads cannot order is read from
Stripe (see `ordering`). Such reads are started when a window of events arrives from the read-
ahead thread, before the batches before it are applied, so that Stripe's latency overlaps the
database writes; a batch's transaction then finds them done instead of waiting on Stripe
(measured: 7% of the applying thread went to waiting for these reads when each batch started
its own). Any read may be repeated: Stripe's current object is never older than the events
that were listed before it was read.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError

PARALLEL_READS = 4

Early = dict[str, "Future[dict[str, Any]]"]  # subscription id -> its read, under way


@functools.cache
def _reader_pool() -> ThreadPoolExecutor:
    """One pool for the process: its threads keep their keep-alive connections to Stripe."""
    return ThreadPoolExecutor(PARALLEL_READS, thread_name_prefix="stripe-read")


def start_reads(gateway: StripeGateway | None, subscription_ids: Iterable[str]) -> Early:
    """Read these subscriptions in the background (a few at a time: each read is mostly waiting
    on Stripe, and the throttle is shared). Safe from any thread."""
    if gateway is None:
        return {}
    return {
        subscription_id: _reader_pool().submit(gateway.retrieve_subscription, subscription_id)
        for subscription_id in subscription_ids
    }


class StripeReads:
    """The reads of one batch: each object read at most once, early reads used when given."""

    def __init__(self, gateway: StripeGateway | None, early: Early | None = None) -> None:
        self.gateway = gateway
        self._early = dict(early or {})
        self._done: dict[str, dict[str, Any]] = {}

    @property
    def count(self) -> int:
        return len(self._done)

    def prefetch(self, subscription_ids: Iterable[str]) -> None:
        """Have these subscriptions read before a transaction needs them; a read that fails
        is made again when needed (and fails its object alone then)."""
        if self.gateway is None:
            return
        wanted = list(subscription_ids)
        missing = [s for s in wanted if s not in self._early and s not in self._done]
        self._early.update(start_reads(self.gateway, missing))
        for subscription_id in wanted:
            with contextlib.suppress(StripeGatewayError):
                self.subscription(subscription_id)

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        return self._read(subscription_id, lambda g: g.retrieve_subscription(subscription_id))

    def customer(self, customer_id: str) -> dict[str, Any]:
        return self._read(customer_id, lambda g: g.retrieve_customer(customer_id))

    def customer_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        listing = self._read(
            f"subscriptions-of:{customer_id}",
            lambda g: {
                "data": list(
                    g.iterate_list("/v1/subscriptions", {"customer": customer_id, "status": "all"})
                )
            },
        )
        return list(listing["data"])

    def _read(self, key: str, request: Callable[[StripeGateway], dict[str, Any]]) -> dict[str, Any]:
        if key in self._done:
            return self._done[key]
        early = self._early.pop(key, None)
        if early is not None:
            with contextlib.suppress(StripeGatewayError):
                self._done[key] = early.result()
                return self._done[key]
        if self.gateway is None:
            raise StripeGatewayError("not_configured", "STRIPE_API_KEY is not set", None)
        self._done[key] = request(self.gateway)
        return self._done[key]
