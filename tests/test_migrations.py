"""Migrations apply on the test engine, are idempotent, and agree with the models."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from collab_billing.db.engine import make_engine
from collab_billing.db.migrate import alembic_config, revisions, upgrade_to_head
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


def migrate_at_once(
    database_url: str, processes: int = 3
) -> list[subprocess.CompletedProcess[str]]:
    """`collab-billing migrate` several times at once, as processes starting together do."""
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [sys.executable, "-m", "collab_billing", "migrate"]
    with ThreadPoolExecutor(processes) as pool:
        runs = pool.map(
            lambda _: subprocess.run(command, env=env, capture_output=True, text=True, timeout=120),
            range(processes),
        )
        return list(runs)


def test_migrations_run_at_once_on_a_new_sqlite_database_all_succeed(tmp_path: Path) -> None:
    for run in migrate_at_once(f"sqlite:///{tmp_path / 'new.db'}"):
        assert run.returncode == 0, run.stderr


@pytest.mark.postgres_only
def test_migrations_run_at_once_on_a_new_postgresql_database_all_succeed(
    own_database: str,
) -> None:
    """serve, reconcile and the CLI each migrate at their start: started together on a new
    schema, two of three failed on PostgreSQL (a type or a column created twice)."""
    for run in migrate_at_once(own_database):
        assert run.returncode == 0, run.stderr


READ_ONLY_COMMANDS = (
    ["users", "list"],
    ["reconcile", "--status"],
    ["usage", "--status"],
    ["notifications", "list"],
)


def test_commands_that_only_read_leave_an_older_schema_as_it_is(tmp_path: Path) -> None:
    """While release N serves, release N+1's status and list commands must not upgrade the
    schema under it: they refuse in one line, naming the revisions, and change nothing."""
    url = f"sqlite:///{tmp_path / 'older.db'}"
    engine = make_engine(url)
    config = alembic_config(engine)
    previous = ScriptDirectory.from_config(config).get_revision("head").down_revision
    assert isinstance(previous, str)
    command.upgrade(config, previous)  # as the release before this one left it
    env = {**os.environ, "DATABASE_URL": url}
    for args in READ_ONLY_COMMANDS:
        run = subprocess.run(
            [sys.executable, "-m", "collab_billing", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert f"at revision {previous}" in run.stderr and "release that serves it" in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert revisions(engine)[0] == previous, args
    upgrade_to_head(engine)
    for args in READ_ONLY_COMMANDS:
        run = subprocess.run(
            [sys.executable, "-m", "collab_billing", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, (args, run.stderr)


def test_a_schema_of_a_later_release_is_one_line_not_a_trace(tmp_path: Path) -> None:
    """A rollback to this release over a database a later one migrated: `migrate` and `serve`
    failed with Alembic's "Can't locate revision" trace, and `users list` said to migrate."""
    url = f"sqlite:///{tmp_path / 'later.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    env = {**os.environ, "DATABASE_URL": url}
    for args in (["migrate"], ["users", "list"]):
        run = subprocess.run(
            [sys.executable, "-m", "collab_billing", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2, (args, run.stderr)
        [line] = run.stderr.strip().splitlines()
        assert "at revision 9999, newer than this release's" in line


def test_usage_values_stored_as_doubles_keep_their_digits_on_sqlite(tmp_path: Path) -> None:
    """0013 made SQLite's values text with SQLite's cast, which keeps 15 significant digits:
    1234567.891234567 pending then was billed as 1234567.89123457."""
    engine = make_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    config = alembic_config(engine)
    command.upgrade(config, "0012")
    values = [1234567.891234567, 123456789012.12346, 0.1, 2.5, 1e16, 7.0]
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO users (id, github_user_id, github_login) VALUES (1, 1, 'a')")
        )
        for number, value in enumerate(values):
            connection.execute(
                text(
                    "INSERT INTO billing_usage_events (user_id, meter_event_name, value, "
                    "timestamp, idempotency_key, identifier, status, attempts, next_attempt_at) "
                    "VALUES (1, 'tokens', :value, 0, :key, :key, 'pending', 0, 0)"
                ),
                {"value": value, "key": f"k{number}"},
            )
    upgrade_to_head(engine)
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT value FROM billing_usage_events ORDER BY id")
        ).scalars()
        assert list(stored) == [
            "1234567.891234567",
            "123456789012.12346",
            "0.1",
            "2.5",
            "10000000000000000",
            "7",
        ]


def test_commands_that_only_read_create_no_database(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"}
    for args in READ_ONLY_COMMANDS:
        run = subprocess.run(
            [sys.executable, "-m", "collab_billing", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode == 2 and "no database at DATABASE_URL=" in run.stderr, args
    assert not (tmp_path / "none.db").exists()  # SQLite would have made an empty one


def test_migrate_to_an_earlier_revision_goes_back_for_an_older_release(tmp_path: Path) -> None:
    """Going back to the previous release: `migrate --to` its head drops what this release
    added, and the previous release's `migrate` then accepts the schema; `migrate` brings it
    forward again. A revision this release does not know is one line."""
    url = f"sqlite:///{tmp_path / 'back.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    config = alembic_config(engine)
    head = ScriptDirectory.from_config(config).get_revision("head")
    previous = head.down_revision
    assert isinstance(previous, str)
    env = {**os.environ, "DATABASE_URL": url}

    def migrate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "collab_billing", "migrate", *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def schema() -> set[tuple[str, str]]:
        found = inspect(engine)
        names = found.get_table_names()
        return {(table, column["name"]) for table in names for column in found.get_columns(table)}

    columns = schema()
    back = migrate("--to", previous)
    assert back.returncode == 0, back.stderr
    assert f"at revision {previous}" in back.stdout and revisions(engine)[0] == previous
    assert schema() < columns  # the head's tables or columns dropped
    forward = migrate()
    assert forward.returncode == 0 and f"at revision {head.revision}" in forward.stdout
    assert schema() == columns
    unknown = migrate("--to", "9999")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "9999" in unknown.stderr and revisions(engine)[0] == head.revision
