"""coupons and discounts: billing_coupons, billing_discounts

A coupon on a subscription (a promotion code entered at Checkout, or `discounts` set through
Stripe's API) is taken off each invoice the subscription makes while it lasts, its metered
usage lines too: the usage estimate, and so `over_spend_cap`, counted money Stripe will never
bill. Coupons (`coupon.*` events) and discounts (`customer.discount.*`) are mirrored as types
of their own, from their events' objects, so no subscription event costs a read. The first
poll of the release lists them (`mirror.registry.MIRROR_FORMAT`).

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

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _mirrored(table: str) -> list[sa.schema.SchemaItem]:
    """The columns every mirrored row has (`db.models.MirroredRow`), and `deleted`."""
    now = sa.text("(CURRENT_TIMESTAMP)")
    return [
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("stripe_state_as_of", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=now, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
    ]


def upgrade() -> None:
    op.create_table(
        "billing_coupons",
        sa.Column("id", _ID, nullable=False),
        sa.Column("stripe_coupon_id", sa.String(length=255), nullable=False),
        sa.Column("percent_off", sa.Float(), nullable=True),
        sa.Column("amount_off", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=16), nullable=True),
        sa.Column("duration", sa.String(length=16), nullable=True),
        sa.Column("duration_in_months", sa.Integer(), nullable=True),
        *_mirrored("billing_coupons"),
        sa.UniqueConstraint("stripe_coupon_id", name=op.f("uq_billing_coupons_stripe_coupon_id")),
    )
    op.create_table(
        "billing_discounts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("billing_customer_id", _ID, nullable=False),
        sa.Column("stripe_discount_id", sa.String(length=255), nullable=False),
        sa.Column("stripe_coupon_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_subscription_item_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stripe_end", sa.DateTime(timezone=True), nullable=True),
        *_mirrored("billing_discounts"),
        sa.ForeignKeyConstraint(
            ["billing_customer_id"],
            ["billing_customers.id"],
            name=op.f("fk_billing_discounts_billing_customer_id_billing_customers"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "stripe_discount_id", name=op.f("uq_billing_discounts_stripe_discount_id")
        ),
    )
    with op.batch_alter_table("billing_discounts") as batch:
        for column in ("billing_customer_id", "stripe_coupon_id", "stripe_subscription_id"):
            batch.create_index(batch.f(f"ix_billing_discounts_{column}"), [column], unique=False)


def downgrade() -> None:
    op.drop_table("billing_discounts")
    op.drop_table("billing_coupons")
