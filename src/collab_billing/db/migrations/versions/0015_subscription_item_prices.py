"""the prices of all a subscription's items (a plan and a metered price beside it)

Rows mirrored before have none until their next event or `resync`; until then a usage
estimate falls back to the meter's newest price, as before.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("billing_subscriptions", sa.Column("stripe_item_price_ids", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("billing_subscriptions") as batch:
        batch.drop_column("stripe_item_price_ids")
