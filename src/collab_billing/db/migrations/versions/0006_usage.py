"""usage: billing meters, the usage outbox, preferences; metered prices; period start

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _now(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        server_default=sa.text("(CURRENT_TIMESTAMP)"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "billing_meters",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("stripe_meter_id", sa.String(length=255), nullable=False),
        sa.Column("event_name", sa.String(length=100), nullable=False),
        sa.Column("display_name", sa.String(length=250), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("aggregation_formula", sa.String(length=16), nullable=False),
        sa.Column("customer_payload_key", sa.String(length=100), nullable=False),
        sa.Column("value_payload_key", sa.String(length=100), nullable=False),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_meters")),
        sa.UniqueConstraint("stripe_meter_id", name=op.f("uq_billing_meters_stripe_meter_id")),
    )
    op.create_index(
        op.f("ix_billing_meters_event_name"), "billing_meters", ["event_name"], unique=False
    )
    op.create_table(
        "billing_usage_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("meter_event_name", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Numeric(30, 12), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("identifier", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger(), nullable=False),
        _now("created_at"),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_billing_usage_events_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_usage_events")),
        sa.UniqueConstraint("identifier", name=op.f("uq_billing_usage_events_identifier")),
        sa.UniqueConstraint(
            "user_id",
            "idempotency_key",
            name=op.f("uq_billing_usage_events_user_id_idempotency_key"),
        ),
    )
    op.create_index(
        "ix_billing_usage_events_status_next_attempt_at",
        "billing_usage_events",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_billing_usage_events_user_id_timestamp",
        "billing_usage_events",
        ["user_id", "timestamp"],
        unique=False,
    )
    op.create_table(
        "billing_preferences",
        sa.Column("user_id", BIG_ID, nullable=False),
        sa.Column("max_monthly_spend_cents", sa.BigInteger(), nullable=True),
        _now("updated_at"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_billing_preferences_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_billing_preferences")),
    )
    with op.batch_alter_table("billing_prices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stripe_meter_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("unit_amount_decimal", sa.String(length=64), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_billing_prices_stripe_meter_id"), ["stripe_meter_id"], unique=False
        )
    with op.batch_alter_table("billing_subscriptions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("stripe_current_period_start", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("billing_subscriptions", schema=None) as batch_op:
        batch_op.drop_column("stripe_current_period_start")
    with op.batch_alter_table("billing_prices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_billing_prices_stripe_meter_id"))
        batch_op.drop_column("unit_amount_decimal")
        batch_op.drop_column("stripe_meter_id")
    op.drop_table("billing_preferences")
    op.drop_index("ix_billing_usage_events_user_id_timestamp", table_name="billing_usage_events")
    op.drop_index(
        "ix_billing_usage_events_status_next_attempt_at", table_name="billing_usage_events"
    )
    op.drop_table("billing_usage_events")
    op.drop_index(op.f("ix_billing_meters_event_name"), table_name="billing_meters")
    op.drop_table("billing_meters")
