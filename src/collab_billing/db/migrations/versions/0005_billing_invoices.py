"""invoices: billing_invoices

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _time(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "billing_invoices",
        sa.Column("id", _ID, nullable=False),
        sa.Column("billing_customer_id", _ID, nullable=False),
        sa.Column("stripe_invoice_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=16), nullable=False),
        sa.Column("amount_due", sa.BigInteger(), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("amount_remaining", sa.BigInteger(), nullable=False),
        sa.Column("hosted_invoice_url", sa.Text(), nullable=True),
        sa.Column("number", sa.String(length=255), nullable=True),
        sa.Column("billing_reason", sa.String(length=64), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        _time("next_payment_attempt"),
        sa.Column("stripe_created", sa.DateTime(timezone=True), nullable=False),
        _time("finalized_at"),
        _time("paid_at"),
        _time("due_date"),
        _time("period_start"),
        _time("period_end"),
        sa.Column("stripe_state_as_of", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["billing_customer_id"],
            ["billing_customers.id"],
            name=op.f("fk_billing_invoices_billing_customer_id_billing_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_invoices")),
        sa.UniqueConstraint(
            "stripe_invoice_id", name=op.f("uq_billing_invoices_stripe_invoice_id")
        ),
    )
    with op.batch_alter_table("billing_invoices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_invoices_billing_customer_id"),
            ["billing_customer_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_billing_invoices_stripe_subscription_id"),
            ["stripe_subscription_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_invoices_stripe_subscription_id"))
        batch_op.drop_index(batch_op.f("ix_billing_invoices_billing_customer_id"))
    op.drop_table("billing_invoices")
