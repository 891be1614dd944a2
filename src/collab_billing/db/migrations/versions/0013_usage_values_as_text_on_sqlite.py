"""usage values kept as their digits on SQLite, whose NUMERIC is a double

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    doubles = bind.execute(
        sa.text("SELECT id, value FROM billing_usage_events WHERE typeof(value) = 'real'")
    ).all()
    # The table is copied, each value cast to text...
    with op.batch_alter_table("billing_usage_events") as batch:
        batch.alter_column("value", type_=sa.String(40), existing_nullable=False)
    # ... but SQLite's cast keeps 15 significant digits (1234567.891234567 became
    # 1234567.89123457, and was billed so): a double is written as its shortest text that
    # reads back as the same double (Python's `repr`), in plain digits.
    if doubles:
        bind.execute(
            sa.text("UPDATE billing_usage_events SET value = :value WHERE id = :id"),
            [{"id": row.id, "value": _digits(row.value)} for row in doubles],
        )


def _digits(value: float) -> str:
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("billing_usage_events") as batch:
        batch.alter_column("value", type_=sa.Numeric(30, 12), existing_nullable=False)
