"""The reconciler's gauges, read from the database at each scrape.

They describe the database, not a process: every process that answers `/metrics` reads them,
so all agree with `/healthz` and `reconcile --status`, and none exports a 0 of its own that
an alert would take for the truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from collab_billing.db.engine import make_session_factory
from collab_billing.reconcile import budget
from collab_billing.reconcile.run import read_status

log = logging.getLogger(__name__)


class DatabaseGauges(Collector):
    def __init__(self, engine: Engine, budget_share: float) -> None:
        self.engine = engine
        self.factory = make_session_factory(engine)
        self.budget_share = budget_share

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            status = read_status(self.engine)
            spent = budget.read_budget(self.factory, time.time(), self.budget_share)
        except Exception as error:  # a scrape must answer while the database is down
            log.warning("could not read the reconciler's gauges: %s", type(error).__name__)
            return
        values = [
            ("reconciler_lag_seconds", "How far behind Stripe the database may be, at most: "
             "the time since the start of the last complete poll", status.lag),
            ("last_complete_poll_timestamp_seconds", "Unix time of the start of the last "
             "complete poll of the Events API", status.last_drain_at),
            ("pending_events", "Events failed or waiting behind a failed event",
             len(status.pending)),
            ("failed_events", "Events that failed at least `max_attempts` times",
             len(status.failed)),
            ("stripe_reads_30d", "Stripe read requests made over the last 30 days",
             spent.reads_30d),
            ("stripe_transactions_30d", "Successful charges seen over the last 30 days "
             "(invoices paid, one-off Checkouts)", spent.transactions_30d),
            ("stripe_read_budget", "Reads the service allows itself over 30 days: "
             "RECONCILE_READ_BUDGET_SHARE x max(10,000, 500 x transactions)", spent.allowed),
        ]  # fmt: skip
        for name, documentation, value in values:
            if value is not None:
                yield GaugeMetricFamily(f"collab_billing_{name}", documentation, value=value)
