"""PostgreSQL's planner statistics, brought up to date while the service fills its tables.

PostgreSQL plans each statement from statistics that only `ANALYZE` gathers: autovacuum runs
it a minute or more after a table changed, and never where autovacuum is off. A catch-up or a
first sync fills the tables faster than that, and a table without statistics is planned as if
a lookup of 500 ids matched half of it: the whole table is read, or walked in key order, for
each batch, instead of its index. So between batches a drain and a first sync analyze the
service's tables that changed by more than a tenth since they were last analyzed
(autovacuum's own rule, applied at once). A column whose values swing within a drain (a
document's `stale` mark) is read through a partial index instead, whatever its statistics
say. SQLite's planner needs no statistics for lookups by indexed keys.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, Table, text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement, Executable

from collab_billing.db.models import Base

# Rows a table must have changed by, besides a tenth of its rows, to be analyzed again: a
# small table is planned well enough from the sizes PostgreSQL always knows.
MIN_CHANGED_ROWS = 1_000

_CHANGED_TABLES = text(
    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
    "AND n_mod_since_analyze > :min_changed + n_live_tup / 10"
)


class Analyze(Executable, ClauseElement):
    """`ANALYZE table` (SQLAlchemy has no construct for it)."""

    inherit_cache = False

    def __init__(self, table: Table) -> None:
        self.table = table


@compiles(Analyze)
def _analyze(element: Analyze, compiler: SQLCompiler, **_kw: Any) -> str:
    return "ANALYZE " + compiler.preparer.format_table(element.table)


class StatisticsKeeper:
    """For a loop that fills the tables: `keep()` analyzes the changed tables (PostgreSQL), at
    most once every `seconds` (finding none is one small read)."""

    def __init__(self, engine: Engine, seconds: float) -> None:
        self.engine = engine
        self.seconds = seconds
        self._next = 0.0

    def keep(self) -> None:
        if time.monotonic() >= self._next:
            analyze_changed_tables(self.engine)
            self._next = time.monotonic() + self.seconds


def analyze_changed_tables(engine: Engine) -> list[str]:
    """Analyze the service's tables that changed much since their statistics were gathered
    (PostgreSQL only); returns their names. Each `ANALYZE` is its own short transaction: it
    blocks no reader or writer."""
    if engine.dialect.name != "postgresql":
        return []
    with engine.connect() as connection:
        changed = set(connection.scalars(_CHANGED_TABLES, {"min_changed": MIN_CHANGED_ROWS}))
        connection.commit()
        tables = [table for table in Base.metadata.sorted_tables if table.name in changed]
        for table in tables:
            connection.execute(Analyze(table))
            connection.commit()
    return [table.name for table in tables]
