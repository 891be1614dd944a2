"""Apply Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


# pg_advisory_xact_lock(key): held by one migration at a time, until its transaction ends.
_MIGRATION_LOCK = text("SELECT pg_advisory_xact_lock(7343)")


def upgrade_to_head(engine: Engine) -> None:
    """Every process migrates at its start (`serve`, `reconcile`, the CLI), so several may at
    once on a new schema: on PostgreSQL they take turns (the later ones find it done); SQLite
    runs them one writer at a time already (Alembic's transaction begins IMMEDIATE)."""
    move_to(engine, None)


def move_to(engine: Engine, revision: str | None) -> None:
    """Upgrade the schema to `revision` (None: this release's head), or downgrade it to an
    earlier one (going back to an older release: what later migrations added is dropped)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(_MIGRATION_LOCK)
        config.attributes["connection"] = connection
        if revision is None:
            command.upgrade(config, "head")
            return
        current = MigrationContext.configure(connection).get_current_revision()
        script = ScriptDirectory.from_config(config)
        later = {r.revision for r in script.iterate_revisions("heads", revision)} - {revision}
        if current in later:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def revisions(engine: Engine) -> tuple[str | None, str | None]:
    """(the database's schema revision, None before any migration; this release's head)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current, ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def known_revisions(engine: Engine) -> set[str]:
    """The schema revisions this release knows (its migrations')."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    return {revision.revision for revision in script.walk_revisions()}
