"""a replayed notification's retry window starts at its replay

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("billing_notifications", sa.Column("replayed_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("billing_notifications") as batch:
        batch.drop_column("replayed_at")
