"""`INSERT ... ON CONFLICT` for the session's engine: both dialects have the same construct."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert(session: Session, table: Any) -> Any:
    """`postgresql.insert(table)` or `sqlite.insert(table)`, by the session's engine."""
    return insert_for(session.get_bind().dialect.name, table)


def insert_for(dialect: str, table: Any) -> Any:
    """`postgresql.insert(table)` or `sqlite.insert(table)`, by the dialect's name."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
