"""What differs between SQLite and PostgreSQL, in one place: `INSERT ... ON CONFLICT` (both
dialects have the same construct), an insert of many rows, and `IN` a list of ids in a
statement built once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Result, any_, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal, _TraverseInternalsType


def insert(session: Session, table: Any) -> Any:
    """`postgresql.insert(table)` or `sqlite.insert(table)`, by the session's engine."""
    return insert_for(session.get_bind().dialect.name, table)


def insert_for(dialect: str, table: Any) -> Any:
    """`postgresql.insert(table)` or `sqlite.insert(table)`, by the dialect's name."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_rows(dialect: str, table: Any, columns: Sequence[str]) -> Any:
    """An `INSERT` (with `ON CONFLICT`, `RETURNING` to add) of many rows of `columns`, run by
    `execute_rows`. On PostgreSQL the rows come from `unnest` of one array per column, typed by
    the table's columns: one statement a batch, planned once, not once per row (`db/engine.py`
    plans each statement for its parameters). SQLite runs it row by row (executemany)."""
    if dialect != "postgresql":
        return sqlite.insert(table)
    # One dimension: a JSON value that is a list is one element, not a nested array.
    arrays = [
        bindparam(name, type_=postgresql.ARRAY(table.c[name].type, dimensions=1))
        for name in columns
    ]
    rows = func.unnest(*arrays).table_valued(*columns).render_derived()
    return postgresql.insert(table).from_select(list(columns), select(*rows.c))


def execute_rows(
    connection: Connection, statement: Any, rows: Sequence[Mapping[str, Any]]
) -> Result[Any]:
    """Run an `insert_rows` statement for `rows` (at least one), each a value for each of its
    columns."""
    if connection.dialect.name != "postgresql":
        return connection.execute(statement, rows)
    return connection.execute(statement, {name: [row[name] for row in rows] for name in rows[0]})


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


class InIds(ColumnElement[bool]):
    """`column IN` the list bound as `ids`, in a statement built once: an expanding `IN` on
    SQLite; `column = ANY(:ids)` on PostgreSQL, one array parameter, so that the statement's
    text is the same for any number of ids (psycopg parses a statement's text once, but only
    for statements of at most 50 parameters, and a batch's `IN` holds up to 500 ids)."""

    inherit_cache = True
    _traverse_internals: _TraverseInternalsType = [  # noqa: RUF012 (SQLAlchemy's protocol)
        ("column", InternalTraversal.dp_clauseelement)
    ]

    def __init__(self, column: ColumnElement[Any]) -> None:
        self.column = column


def in_ids(column: Any) -> InIds:
    """`column IN :ids` (`InIds`); execute with `{"ids": [...]}`."""
    return InIds(column)


@compiles(InIds)
def _in_ids_expanding(element: InIds, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.column.in_(bindparam("ids", expanding=True)), **kw)


@compiles(InIds, "postgresql")
def _in_ids_any(element: InIds, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam("ids", type_=postgresql.ARRAY(element.column.type))
    return compiler.process(element.column == any_(array), **kw)
