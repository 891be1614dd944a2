"""each subscription's discounts (its coupons)

A coupon on a subscription (a promotion code entered at Checkout, or `discounts` set through
Stripe's API) is taken off each invoice the subscription makes while it lasts, its metered
usage lines too: the usage estimate, and so `over_spend_cap`, counted money Stripe will never
bill. The first poll of the release lists the subscriptions again to fill them
(`mirror.registry.MIRROR_FORMAT`).

Revision ID: 0019
Revises: 0018
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("billing_subscriptions", sa.Column("stripe_discounts", sa.JSON()))


def downgrade() -> None:
    with op.batch_alter_table("billing_subscriptions") as batch:
        batch.drop_column("stripe_discounts")
