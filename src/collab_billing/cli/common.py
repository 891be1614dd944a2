"""What every command shares: settings, the database's engine, one-line errors."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NoReturn

import typer
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from collab_billing import metrics
from collab_billing.config import Settings, SettingsError, load_settings
from collab_billing.db.engine import make_engine, shown_database_url
from collab_billing.db.migrate import known_revisions, revisions, upgrade_to_head
from collab_billing.stripe_gateway import StripeGateway, gateway_or_none

EXIT_USAGE = 2
log = logging.getLogger(__name__)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as error:
        fail(str(error))


def migrated_engine(settings: Settings, wait_seconds: float = 0.0) -> Engine:
    """The database's engine, migrated to head. A database that cannot be reached is retried
    for `wait_seconds` (a log line per try), then a one-line error naming it, exit 2."""
    engine = make_engine(settings.database_url)
    deadline = time.monotonic() + wait_seconds
    delay = 0.5
    while True:
        try:
            refuse_a_newer_schema(engine, *revisions(engine))
            upgrade_to_head(engine)
            return engine
        except DBAPIError as error:
            where, reason = where_and_why(settings, error)
            if not isinstance(error, OperationalError | InterfaceError):  # no network failure
                fail(f"the database at DATABASE_URL={where} failed: {reason}")
            if time.monotonic() + delay > deadline:
                fail(f"cannot reach the database at DATABASE_URL={where}: {reason}")
            log.warning(
                "waiting for the database at DATABASE_URL=%s (%s): retrying in %.1f s",
                where,
                reason,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def current_engine(settings: Settings) -> Engine:
    """The database's engine for a command that only reads: it does not migrate (the status
    command of a release about to be deployed must not upgrade the schema under the one that
    runs), and refuses a schema that is not this release's."""
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        # Checked before connecting: SQLite would create the file, and a command that only
        # reads would leave an empty database behind.
        fail(f"no database at DATABASE_URL={shown_database_url(settings.database_url)}: run "
             "`collab-billing migrate` (or `serve`) first")  # fmt: skip
    engine = make_engine(settings.database_url)
    try:
        current, head = revisions(engine)
    except (OperationalError, InterfaceError) as error:
        where, reason = where_and_why(settings, error)
        fail(f"cannot reach the database at DATABASE_URL={where}: {reason}")
    if current is None:
        fail("the database was never migrated: run `collab-billing migrate` first")
    refuse_a_newer_schema(engine, current, head)
    if current != head:
        fail(
            f"the database schema is at revision {current}, this release's is {head}: use "
            "this command of the release that serves it, or deploy this release (its "
            "`collab-billing migrate` brings the schema to it)"
        )
    return engine


def refuse_a_newer_schema(engine: Engine, current: str | None, head: str | None) -> None:
    """A schema of a later release (a rollback) is a one-line error, not Alembic's trace."""
    if current is not None and current not in known_revisions(engine):
        fail(
            f"the database schema is at revision {current}, newer than this release's "
            f"({head}): deploy the release that migrated it, or restore a backup from before"
        )


def where_and_why(settings: Settings, error: DBAPIError) -> tuple[str, str]:
    """The database's URL without its password, and the first line of the driver's error."""
    where = shown_database_url(settings.database_url)
    return where, str(error.orig or error).strip().splitlines()[0]


def gateway_or_exit(settings: Settings) -> StripeGateway:
    gateway = gateway_or_none(settings, metrics.observe_stripe_request)
    if gateway is None:
        fail("STRIPE_API_KEY is not set")
    return gateway
