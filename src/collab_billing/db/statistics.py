"""The planner's statistics of the tables a drain fills, on PostgreSQL.

PostgreSQL plans a statement by the statistics `ANALYZE` gathers. Autovacuum gathers them once
a table has changed by a tenth (looking at most once a minute), or never where it is off; a
catch-up into a new database grows tables from nothing far faster. Without statistics the
planner takes a column that is not unique to hold 200 distinct values: a state document's
lookup of 500 customers' subscriptions (`billing_customer_id = ANY(:ids)`) is then taken to
match most of the table, which is read whole (40-90 ms at 100,000 customers, against under
1 ms by its index once analyzed). No way of writing the lookup makes its plan independent of
that estimate (a join on the ids, through the customers' primary key, takes each customer to
have 1/200 of the subscriptions just the same).

So a drain analyzes each table of the service that has doubled in size since it was last
analyzed (by anyone: autovacuum too), once it holds `MIN_PAGES`: about log2(size) times as a
table grows, each a sample of at most 30,000 rows (~0.1 s). Sizes are the tables' files (what
the planner scales its estimates by), known at once, not the statistics collector's row
counts, which lag a second. `ANALYZE` runs outside the batches' transactions, skips a table it
cannot lock at once (autovacuum at it), and only warns about a table the database user does
not own.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Engine, text

from collab_billing.db.models import Base

log = logging.getLogger(__name__)

# Below this (8 KB pages: 1 MB) a table is read in a moment however it is planned.
MIN_PAGES = 128
# How often the tables' sizes are looked at.
CHECK_SECONDS = 1.0

# Each table's size in pages now, and when it was last analyzed (or vacuumed; 0: never).
_SIZES = text(
    """
    SELECT relname, pg_relation_size(oid) / current_setting('block_size')::int, relpages
    FROM pg_class
    WHERE relnamespace = current_schema()::regnamespace AND relname = ANY(:tables)
    """
)


class TableStatistics:
    """`refresh()` between a drain's batches: analyzes the service's tables that have grown."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.enabled = engine.dialect.name == "postgresql"
        self.tables = sorted(Base.metadata.tables)
        self._next_check = 0.0
        # Pages when this process last asked for each table's analysis: asked again only once
        # doubled again, even if it was skipped (locked, or not the user's to analyze).
        self._asked_at: dict[str, int] = {}

    def refresh(self) -> list[str]:
        """Analyze the tables that have doubled since last analyzed (one look at most every
        `CHECK_SECONDS`); returns their names."""
        if not self.enabled or time.monotonic() < self._next_check:
            return []
        self._next_check = time.monotonic() + CHECK_SECONDS
        with self.engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            sizes = connection.execute(_SIZES, {"tables": self.tables}).all()
            grown = {
                name: pages
                for name, pages, analyzed in sizes
                if pages >= MIN_PAGES and pages >= 2 * max(analyzed, self._asked_at.get(name, 0))
            }
            if not grown:
                return []
            quote = connection.dialect.identifier_preparer.quote
            started = time.monotonic()
            connection.execute(text(f"ANALYZE (SKIP_LOCKED) {', '.join(map(quote, grown))}"))
        self._asked_at.update(grown)
        names = sorted(grown)
        log.info(
            "tables analyzed",
            extra={"tables": names, "seconds": round(time.monotonic() - started, 3)},
        )
        return names
