"""The planner's statistics of tables a catch-up grows, gathered by the reconciler on
PostgreSQL.

PostgreSQL plans a lookup by a key that is not unique (the state documents' lookup of 500
customers' subscriptions) from the table's statistics, which only `ANALYZE` gathers. Without
any, it takes each id to match 0.5% of the table, 500 ids most of it, and reads the whole
table for each lookup. Autovacuum gathers them a minute (`autovacuum_naptime`) after a table
has changed by 10%, and never when it is off: a catch-up into a new database, whose tables grow
from nothing, would plan its lookups so for that minute, or for the whole catch-up
(docs/benchmarks.md, "apply"). So the reconciler analyzes the tables that have grown by
autovacuum's measure (50 rows plus 10%) since their last `ANALYZE`, between its transactions.
Growth, not every change: statistics taken of a table keep their proportions as it grows, and
the rows a catch-up updates again and again would have it analyze its largest tables each
time. SQLite plans these lookups by their indexes without statistics.
"""

from __future__ import annotations

from sqlalchemy import Engine, text

# Tables of the service's schema with more live rows than their last `ANALYZE` counted (none
# yet: -1, or 0 before PostgreSQL 14), by 50 rows plus 10%.
_GROWN = text(
    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
    " WHERE s.schemaname = current_schema()"
    " AND s.n_live_tup > 50 + 1.1 * greatest(c.reltuples, 0)"
    " ORDER BY s.relname"
)


def analyze_grown_tables(engine: Engine) -> list[str]:
    """`ANALYZE` the tables grown since their last one (PostgreSQL; nothing on SQLite), with no
    transaction open: each table is analyzed in a transaction of its own, and one that another
    (autovacuum) is vacuuming or analyzing is skipped rather than waited for. Returns their
    names."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        grown = list(connection.scalars(_GROWN))
        if grown:
            # Table names cannot be bound parameters: quoted by the dialect, from the catalog.
            quote = connection.dialect.identifier_preparer.quote
            connection.exec_driver_sql(
                f"ANALYZE (SKIP_LOCKED) {', '.join(quote(name) for name in grown)}"
            )
    return grown
