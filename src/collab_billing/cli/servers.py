"""`serve`, `dev` and `stripe-emulator`: the long-running HTTP servers."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from sqlalchemy.engine import make_url

from collab_billing.cli.common import fail, migrated_engine, settings_or_exit
from collab_billing.logs import configure_logging


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8080,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="API processes. Each runs the reconciler; one at a time is the leader.",
        ),
    ] = 1,
    access_log: Annotated[
        bool, typer.Option(help="Log every request (uvicorn's access log, one line each).")
    ] = True,
) -> None:
    """Run the admin API (with the reconciler as a background task)."""
    # Imported here, as in `dev`: the other commands start without FastAPI and uvicorn.
    from collab_billing.api import server
    from collab_billing.api.app import create_app

    settings = settings_or_exit()
    if settings.admin_token is None:
        fail("ADMIN_TOKEN is not set: serve refuses to start without an admin token")
    if workers > 1 and make_url(settings.database_url).get_backend_name() == "sqlite":
        fail(
            f"--workers {workers} needs PostgreSQL: SQLite has one writer at a time, "
            "so run one worker (the default) or set DATABASE_URL to PostgreSQL"
        )
    configure_logging(settings)
    engine = migrated_engine(settings, settings.database_startup_wait_seconds)
    if workers > 1:
        engine.dispose()  # each worker process opens its own connections
        server.run(None, host, port, workers, access_log)
        return
    run_api(create_app(settings, engine), host, port, access_log)


def run_api(api: object, host: str, port: int, access_log: bool = True) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully and exit 0."""
    from collab_billing.api import server

    server.run(api, host, port, access_log=access_log)


def dev(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the API.")] = 8080,
    emulator_port: Annotated[int, typer.Option(min=0, max=65535)] = 12111,
) -> None:
    """Run everything locally: SQLite, the Stripe emulator, the API and the reconciler."""
    from collab_billing.devmode import run_dev

    run_dev(api_port=port, emulator_port=emulator_port, admin_token=secrets.token_urlsafe(24))


def stripe_emulator(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 12111,
    api_key: Annotated[
        str | None, typer.Option(help="Accept only this key (default: any sk_test_ key).")
    ] = None,
) -> None:
    """Run the stateful Stripe emulator alone (state in memory only)."""
    from stripe_emulator.server import serve as serve_emulator

    serve_emulator(host=host, port=port, api_key=api_key)
