"""when Stripe created each subscription: "oldest first" and the plan's tie-break by it

Row ids follow the order events were applied in, which out-of-order webhooks invert. Rows
mirrored before have none until their next event or `resync`, and count as the oldest.

Revision ID: 0016
Revises: 0015
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("billing_subscriptions", sa.Column("stripe_created", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("billing_subscriptions") as batch:
        batch.drop_column("stripe_created")
