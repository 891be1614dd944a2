"""when each subscription item was added

Stripe bills a metered item added in the middle of a period for the usage from then on: a usage
estimate counted the whole period. The first poll of the release lists the subscriptions again
to fill it (`mirror.registry.MIRROR_FORMAT`).

Revision ID: 0017
Revises: 0016
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("billing_subscriptions", sa.Column("stripe_item_created", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("billing_subscriptions") as batch:
        batch.drop_column("stripe_item_created")
