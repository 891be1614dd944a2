"""entitlements, state documents and the notification outbox

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("delivered_to", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_billing_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_notifications")),
    )
    with op.batch_alter_table("billing_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_notifications_delivered_at_user_id_id"),
            ["delivered_at", "user_id", "id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_billing_notifications_user_id"), ["user_id"], unique=False
        )

    op.create_table(
        "billing_states",
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_billing_states_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_billing_states")),
    )
    op.create_table(
        "billing_entitlement_syncs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "billing_customer_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
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
            name=op.f("fk_billing_entitlement_syncs_billing_customer_id_billing_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_entitlement_syncs")),
        sa.UniqueConstraint(
            "billing_customer_id", name=op.f("uq_billing_entitlement_syncs_billing_customer_id")
        ),
        sa.UniqueConstraint(
            "stripe_customer_id", name=op.f("uq_billing_entitlement_syncs_stripe_customer_id")
        ),
    )
    op.create_table(
        "billing_entitlements",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "billing_customer_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            nullable=False,
        ),
        sa.Column("stripe_feature_id", sa.String(length=255), nullable=False),
        sa.Column("lookup_key", sa.String(length=255), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["billing_customer_id"],
            ["billing_customers.id"],
            name=op.f("fk_billing_entitlements_billing_customer_id_billing_customers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_entitlements")),
        sa.UniqueConstraint(
            "billing_customer_id",
            "stripe_feature_id",
            name=op.f("uq_billing_entitlements_billing_customer_id_stripe_feature_id"),
        ),
    )
    with op.batch_alter_table("billing_entitlements", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_billing_entitlements_billing_customer_id"),
            ["billing_customer_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_entitlements", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_entitlements_billing_customer_id"))

    op.drop_table("billing_entitlements")
    op.drop_table("billing_entitlement_syncs")
    op.drop_table("billing_states")
    with op.batch_alter_table("billing_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_notifications_user_id"))
        batch_op.drop_index(batch_op.f("ix_billing_notifications_delivered_at_user_id_id"))

    op.drop_table("billing_notifications")
