"""Threads of their own for the routes that call Stripe.

Every route that waits on Stripe holds a thread while it waits. On anyio's shared pool (40
threads) a Stripe that stopped answering took them all, and `POST /users` waited 14 s for a
thread. Here Stripe work runs on a separate, bounded set of threads, and a request that cannot
get one within `queue_seconds` is refused with 503 at once instead of piling up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio

from collab_billing import metrics

T = TypeVar("T")
Args = TypeVarTuple("Args")


class StripeBusy(Exception):
    """Every slot for Stripe calls stayed taken for the whole wait."""


class StripeCalls:
    def __init__(self, concurrency: int, queue_seconds: float) -> None:
        self.queue_seconds = queue_seconds
        self._slots = anyio.Semaphore(concurrency)
        self._threads = anyio.CapacityLimiter(concurrency)

    async def run(self, work: Callable[[*Args], T], *args: *Args) -> T:
        """`work(*args)` on a Stripe thread; `StripeBusy` when none frees up in time."""
        await self._take_slot()
        try:
            with metrics.API_STRIPE_CALLS_IN_PROGRESS.track_inprogress():
                return await anyio.to_thread.run_sync(work, *args, limiter=self._threads)
        finally:
            self._slots.release()

    async def _take_slot(self) -> None:
        # Only the wait for a slot is timed: once Stripe work has started it runs to its end
        # (the gateway's own timeout bounds it), so that its outcome is never thrown away.
        with anyio.move_on_after(self.queue_seconds):
            await self._slots.acquire()
            return
        metrics.API_STRIPE_CALLS_REFUSED.inc()
        raise StripeBusy
