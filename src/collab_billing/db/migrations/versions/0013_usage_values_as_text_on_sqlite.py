"""usage values kept as their digits on SQLite, whose NUMERIC is a double

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # The table is copied; a double becomes its shortest text (SQLite's own rendering).
    with op.batch_alter_table("billing_usage_events") as batch:
        batch.alter_column("value", type_=sa.String(40), existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("billing_usage_events") as batch:
        batch.alter_column("value", type_=sa.Numeric(30, 12), existing_nullable=False)
