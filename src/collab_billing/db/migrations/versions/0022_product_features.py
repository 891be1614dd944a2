"""products' features (`billing_product_features`, watermarked by `billing_product_feature_syncs`)

A customer's active entitlements do not say which subscription gives each feature: with the
features of each product, the state document serves only those of the subscriptions that
grant access (a subscription past due beyond its grace, beside an active one, gave its
features all the same).

Revision ID: 0022
Revises: 0021
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        server_default=sa.text("(CURRENT_TIMESTAMP)"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "billing_product_feature_syncs",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("stripe_product_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_state_as_of", sa.BigInteger(), nullable=False),
        sa.Column("stripe_state_version", sa.BigInteger(), nullable=False, server_default="0"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_product_feature_syncs")),
        sa.UniqueConstraint(
            "stripe_product_id", name=op.f("uq_billing_product_feature_syncs_stripe_product_id")
        ),
    )
    op.create_table(
        "billing_product_features",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("stripe_product_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_feature_id", sa.String(length=255), nullable=False),
        sa.Column("lookup_key", sa.String(length=255), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_product_features")),
        sa.UniqueConstraint(
            "stripe_product_id",
            "stripe_feature_id",
            name=op.f("uq_billing_product_features_stripe_product_id_stripe_feature_id"),
        ),
    )
    op.create_index(
        op.f("ix_billing_product_features_stripe_product_id"),
        "billing_product_features",
        ["stripe_product_id"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_billing_product_features_stripe_product_id"), "billing_product_features")
    op.drop_table("billing_product_features")
    op.drop_table("billing_product_feature_syncs")
