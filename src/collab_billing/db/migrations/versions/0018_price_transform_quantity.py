"""each price's `transform_quantity` (package pricing)

A metered price of "$5 per 1,000 units" divides the usage by 1,000 (rounded) before pricing
it: a usage estimate multiplied the raw usage, 1,000 times what Stripe bills. The first poll of
the release lists the prices again to fill them (`mirror.registry.MIRROR_FORMAT`).

Revision ID: 0018
Revises: 0017
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("billing_prices", sa.Column("transform_divide_by", sa.BigInteger()))
    op.add_column("billing_prices", sa.Column("transform_round", sa.String(8)))


def downgrade() -> None:
    with op.batch_alter_table("billing_prices") as batch:
        batch.drop_column("transform_divide_by")
        batch.drop_column("transform_round")
