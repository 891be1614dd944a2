"""each mirrored row's `stripe_state_version`: how many times it was written

A read from Stripe made during second T does not show an event created later in T. Such an
event, applied (a webhook) between the read and the transaction that writes the read, left a
row of watermark T that the read then overwrote with the older object: the event was in the
ledger, so the row stayed behind Stripe until the object's next event. A read is now written
over a row of its own second only if the row's version is the one seen before the read was
made (docs/reconciliation.md, "Reads").

Revision ID: 0020
Revises: 0019
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIRRORED_TABLES = (
    "billing_subscriptions",
    "billing_prices",
    "billing_products",
    "billing_coupons",
    "billing_discounts",
    "billing_invoices",
    "billing_entitlement_syncs",
)


def upgrade() -> None:
    for table in MIRRORED_TABLES:
        op.add_column(
            table,
            sa.Column("stripe_state_version", sa.BigInteger(), nullable=False, server_default="0"),
        )


def downgrade() -> None:
    for table in MIRRORED_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("stripe_state_version")
