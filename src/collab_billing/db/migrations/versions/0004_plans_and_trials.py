"""plans and trials: a subscription's quantity, trial end and cancellation reason; a
customer's one trial

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("billing_subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quantity", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("stripe_trial_end", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("stripe_cancellation_reason", sa.String(length=64), nullable=True)
        )
    with op.batch_alter_table("billing_customers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("trial_started_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_customers", schema=None) as batch_op:
        batch_op.drop_column("trial_started_at")
    with op.batch_alter_table("billing_subscriptions", schema=None) as batch_op:
        batch_op.drop_column("stripe_cancellation_reason")
        batch_op.drop_column("stripe_trial_end")
        batch_op.drop_column("quantity")
