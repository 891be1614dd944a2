"""SQLite WAL checkpoints during a drain: done by the reconciler, off its applying thread.

In WAL mode every commit appends the pages it changed to the WAL, and a checkpoint copies them back
into the database file. By default the connection whose commit takes the WAL past 1,000 pages runs
that checkpoint in its commit. A drain changes pages all over the subscriptions' table, and all over
the ledger's index when event ids are random (as the emulator's were until it shaped them as
Stripe's, ordered by the second): about one page per event, so at a million events a batch of 2,000
changed ~2,000 pages, and every batch paid for a checkpoint of the pages it had just written (a
third of the drain was commits). Checkpointing less often writes a page changed by several batches
once; but the connection that crosses the threshold pays, and during a drain that could be a webhook
delivery, waiting for tens of MB of page writes.

So the threshold of every connection is high (`AUTOCHECKPOINT_PAGES`, a safety net), and the
reconciler checkpoints every `BATCHES_PER_CHECKPOINT` batches itself, on a thread of its own,
while it goes on applying, and once more when the drain ends (a poll that applied nothing does
not). A checkpoint writes only what no earlier checkpoint did, so whoever crosses the safety
net after one of these has little left to copy. The API's webhook writers do the same every
`WEBHOOK_GROUPS_PER_CHECKPOINT` groups: without a reconciler (`RECONCILE_ENABLED=false`) the
safety net would otherwise be the only checkpoint, and at 100 deliveries/s a delivery would
pay for one of 40,000 pages about once a minute.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import Engine

log = logging.getLogger(__name__)

# Pages (4 KiB) in the WAL after which any connection's commit runs a checkpoint.
AUTOCHECKPOINT_PAGES = 40_000
# At most ~2,000 changed pages a batch: the reconciler's checkpoints keep the WAL near
# 10,000 pages (40 MB), far below the safety net.
BATCHES_PER_CHECKPOINT = 5
# A group of one delivery changes ~5 pages: ~500 pages a checkpoint, about SQLite's own rhythm.
WEBHOOK_GROUPS_PER_CHECKPOINT = 100


class WalCheckpoints:
    """Counts committed batches and checkpoints every few, one checkpoint at a time (no-op on
    PostgreSQL). Several threads may report their batches."""

    def __init__(self, engine: Engine, every: int = BATCHES_PER_CHECKPOINT) -> None:
        self.engine = engine
        self.every = every
        self._enabled = engine.dialect.name == "sqlite"
        self._batches = 0
        self._running: Future[None] | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def batch_committed(self) -> None:
        if not self._enabled:
            return
        with self._lock:
            self._batches += 1
            if self._batches < self.every or (self._running and not self._running.done()):
                return  # a checkpoint still running covers these batches too, or the next one
            self._batches = 0
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="wal-checkpoint")
            self._running = self._thread.submit(self._checkpoint)

    def close(self) -> None:
        """At the end of a drain: checkpoint what its last batches wrote, so that the writes
        until the next drain (webhooks, the API) do not find them in the WAL."""
        if self._batches and self._enabled:
            self._batches = 0
            if self._running is not None:
                self._running.result()
            self._checkpoint()
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for readers or the writer. Outside any
        # transaction: the raw connection, not a session (which would begin one).
        try:
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
            finally:
                connection.close()
        except Exception as error:  # harmless: the next one, or the safety net, copies it
            log.debug("WAL checkpoint failed: %s", error)
