"""state documents marked stale: a catch-up recomputes them once, not batch by batch

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("billing_states") as batch:
        batch.add_column(
            sa.Column("stale", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    op.create_index("ix_billing_states_stale_user_id", "billing_states", ["stale", "user_id"])


def downgrade() -> None:
    op.drop_index("ix_billing_states_stale_user_id", table_name="billing_states")
    with op.batch_alter_table("billing_states") as batch:
        batch.drop_column("stale")
