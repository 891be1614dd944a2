"""state documents: when their grace ends, and documents recomputed in the integrated shape

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("billing_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("grace_ends_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_billing_states_grace_ends_at"), ["grace_ends_at"], unique=False
        )
    # Stored documents have the shape before plans, invoices and usage were integrated: none is
    # served any more (`GET /billing/state` computes it from the rows until the user's next
    # change stores the new shape with the next version).
    op.execute(sa.text("UPDATE billing_states SET document = NULL"))


def downgrade() -> None:
    with op.batch_alter_table("billing_states", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_states_grace_ends_at"))
        batch_op.drop_column("grace_ends_at")
