"""tiered prices: billing_scheme, tiers_mode and tiers on billing_prices

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("billing_prices") as batch:
        batch.add_column(
            sa.Column(
                "billing_scheme", sa.String(length=16), server_default="per_unit", nullable=False
            )
        )
        batch.add_column(sa.Column("tiers_mode", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("tiers", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("billing_prices") as batch:
        batch.drop_column("tiers")
        batch.drop_column("tiers_mode")
        batch.drop_column("billing_scheme")
