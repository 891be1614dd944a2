"""`migrate` and `users`: the database's schema and the users that can subscribe."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from collab_billing.cli.common import (
    current_engine,
    fail,
    migrated_engine,
    settings_or_exit,
    where_and_why,
)
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.engine import make_engine, make_session_factory, transaction
from collab_billing.db.migrate import known_revisions, move_to, revisions
from collab_billing.logs import configure_logging


def migrate(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Move the schema to this revision; an earlier one (the head of the release "
            "to go back to) drops what the later migrations added.",
        ),
    ] = None,
) -> None:
    """Apply the database migrations (running it twice is a no-op)."""
    settings = settings_or_exit()
    configure_logging(settings)
    engine = migrated_engine(settings) if to is None else moved_engine(settings, to)
    typer.echo(f"database schema at revision {revisions(engine)[0]}")


def moved_engine(settings: Settings, revision: str) -> Engine:
    """The database's engine, its schema moved to `revision` (up or down)."""
    engine = make_engine(settings.database_url)
    known = known_revisions(engine)
    if revision not in known:
        fail(f"--to {revision}: not a revision of this release ({', '.join(sorted(known))})")
    try:
        move_to(engine, revision)
    except DBAPIError as error:
        where, reason = where_and_why(settings, error)
        fail(f"the database at DATABASE_URL={where} failed: {reason}")
    return engine


def users_add(
    github_user_id: Annotated[int, typer.Option()],
    github_login: Annotated[str, typer.Option()],
    email: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create or update a user (checked as `POST /users` checks it)."""
    from pydantic import ValidationError

    from collab_billing.api.schemas import UserIn

    given: dict[str, object] = {"github_user_id": github_user_id, "github_login": github_login}
    if email is not None:
        given["email_address"] = email
    try:
        wanted = UserIn.model_validate(given)
    except ValidationError as error:
        fail(
            "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in error.errors())
        )
    settings = settings_or_exit()
    engine = migrated_engine(settings)
    email_address = queries.KEEP if email is None else wanted.email_address
    with transaction(make_session_factory(engine)) as session:
        user, created = queries.upsert_user(
            session, wanted.github_user_id, wanted.github_login, email_address
        )
        typer.echo(f"{'created' if created else 'updated'} user {user.id} ({user.github_login})")


def users_list() -> None:
    """List the users, one per line."""
    settings = settings_or_exit()
    engine = current_engine(settings)
    with make_session_factory(engine)() as session:
        for user in queries.list_users(session):
            typer.echo(f"{user.github_user_id}\t{user.github_login}\t{user.email_address or ''}")
