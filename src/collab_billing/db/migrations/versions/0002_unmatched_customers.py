"""unmatched Stripe customers

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "unmatched_stripe_customers",
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("github_user_id", sa.BigInteger(), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column(
            "seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("stripe_customer_id", name=op.f("pk_unmatched_stripe_customers")),
    )
    with op.batch_alter_table("unmatched_stripe_customers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_unmatched_stripe_customers_github_user_id"),
            ["github_user_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("unmatched_stripe_customers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_unmatched_stripe_customers_github_user_id"))
    op.drop_table("unmatched_stripe_customers")
