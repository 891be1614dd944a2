"""each unmatched customer's `version`: how many times it was written

A customer linked late (its user appeared, or a `customer.updated` named one) is linked with
its objects, listed before the transaction that links it. Until that transaction commits the
customer is not ours, so an event of one of its objects applied meanwhile (a webhook) was
skipped again, into the ledger, and the older list was written: the row stayed behind Stripe
until the object's next event. Each skip now raises the customer's version, and the list is
written only if the version is the one seen before it was read (docs/reconciliation.md,
"Reads").

Revision ID: 0021
Revises: 0020
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "unmatched_stripe_customers",
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("unmatched_stripe_customers") as batch:
        batch.drop_column("version")
