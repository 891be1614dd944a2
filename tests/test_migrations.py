"""Migrations apply on the test engine, are idempotent, and agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from collab_billing.db.migrate import upgrade_to_head
from collab_billing.db.models import Base


def test_upgrade_creates_the_tables_of_the_design(engine: Engine) -> None:
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    assert {
        "users",
        "billing_customers",
        "billing_subscriptions",
        "processed_stripe_events",
    } <= tables
    customer_uniques = {
        tuple(c["column_names"]) for c in inspector.get_unique_constraints("billing_customers")
    }
    assert {("user_id",), ("stripe_customer_id",)} <= customer_uniques
    foreign_keys = inspector.get_foreign_keys("billing_customers")
    assert foreign_keys[0]["referred_table"] == "users"
    assert foreign_keys[0]["options"].get("ondelete", "").upper() == "CASCADE"
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("processed_stripe_events")}
    assert ("stripe_event_created_timestamp",) in indexed
    indexed = {tuple(i["column_names"]) for i in inspector.get_indexes("billing_subscriptions")}
    assert ("billing_customer_id",) in indexed


def test_running_migrations_twice_is_a_no_op(engine: Engine) -> None:
    upgrade_to_head(engine)
    upgrade_to_head(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() is not None


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
