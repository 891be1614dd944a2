"""A catch-up into a new PostgreSQL database leaves the planner statistics of the tables it
filled (`db.statistics`): without them, lookups by a column that is not unique read whole
tables."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from collab_billing.config import Settings
from collab_billing.db import statistics
from collab_billing.db.engine import make_engine
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.reconcile_helpers import generate_backlog
from tests.stripe_helpers import Emulator

FILLED = ("billing_customers", "billing_subscriptions", "processed_stripe_events")
SIZES = text(
    """
    SELECT s.relname, s.last_analyze, c.relpages, pg_relation_size(c.oid) / 8192
    FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
    WHERE s.relname = ANY(:tables)
    """
)


@pytest.mark.postgres_only
def test_a_catch_up_into_a_new_database_leaves_the_tables_it_filled_analyzed(
    stripe_settings: Settings,
    emulator: Emulator,
    own_database: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each table the drain filled was analyzed at half its final size or more, though the
    tables grew from nothing within seconds (autovacuum, when on, looks once a minute)."""
    monkeypatch.setattr(statistics, "MIN_PAGES", 2)  # the tables of 300 customers are small
    monkeypatch.setattr(statistics, "CHECK_SECONDS", 0.0)
    engine = make_engine(own_database)
    try:
        upgrade_to_head(engine)
        settings = stripe_settings.model_copy(update={"database_url": own_database})
        reconciler = Reconciler(settings, engine, StripeGateway(settings))
        generate_backlog(emulator, reconciler.factory, customers=300, per_customer=10)
        report = reconciler.drain()
        assert report.stats.total("applied") >= 2_000
        with engine.connect() as connection:
            rows = connection.execute(SIZES, {"tables": list(FILLED)}).all()
        assert sorted(name for name, *_ in rows) == sorted(FILLED)
        for name, last_analyze, analyzed_pages, pages in rows:
            assert last_analyze is not None, name
            assert pages >= statistics.MIN_PAGES and 2 * analyzed_pages >= pages, name
    finally:
        engine.dispose()
