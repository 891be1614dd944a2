"""when Stripe created and ended each subscription; each invoice's Stripe customer

`stripe_created`: "oldest first" and the plan's tie-break (row ids follow the order events
were applied in, which out-of-order webhooks invert). `stripe_ended_at`: usage until then was
billed by the subscription (or free in its trial), so a usage estimate after it starts there.
`billing_invoices.stripe_customer_id`: an invoice of a customer since deleted on Stripe (the
user's row moved to a new customer) is no open invoice of the user's any more.
Rows mirrored before have none until their next event or `resync`.

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
    for name in ("stripe_created", "stripe_ended_at"):
        op.add_column("billing_subscriptions", sa.Column(name, sa.DateTime(timezone=True)))
    op.add_column("billing_invoices", sa.Column("stripe_customer_id", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("billing_subscriptions") as batch:
        batch.drop_column("stripe_created")
        batch.drop_column("stripe_ended_at")
    with op.batch_alter_table("billing_invoices") as batch:
        batch.drop_column("stripe_customer_id")
