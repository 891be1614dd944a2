"""`usage` and `notifications`: what waits to leave the service, and sending it again."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from collab_billing.cli.common import (
    current_engine,
    fail,
    gateway_or_exit,
    migrated_engine,
    settings_or_exit,
)
from collab_billing.db.engine import make_session_factory
from collab_billing.logs import configure_logging


def usage(
    show_status: Annotated[
        bool, typer.Option("--status", help="Show the usage outbox and exit.")
    ] = False,
    send: Annotated[
        bool, typer.Option("--send", help="Run the usage sender alone until SIGTERM.")
    ] = False,
) -> None:
    """The usage outbox: records waiting for, sent to or refused by Stripe."""
    # Imported here: only this command needs the billing stack, which every start would pay.
    from collab_billing.billing.sender import UsageSender, read_usage_status

    settings = settings_or_exit()
    configure_logging(settings)
    if send:
        engine = migrated_engine(settings)
        gateway_or_exit(settings)
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        UsageSender(settings, engine).run(stop)
        return
    if not show_status:
        fail("give --status or --send")
    status = read_usage_status(make_session_factory(current_engine(settings)))
    counts = status.counts
    age = status.oldest_pending_age
    typer.echo(
        f"pending: {counts.get('pending', 0)}  sent: {counts.get('sent', 0)}  "
        f"failed: {counts.get('failed', 0)}"
    )
    typer.echo(f"oldest pending: {'none' if age is None else f'{age:.0f} s old'}")
    for failed in status.recent_failures:
        typer.echo(
            f"  failed: user {failed.github_user_id}, idempotency key {failed.idempotency_key!r}"
            f" ({failed.event_name}, {failed.identifier}): {failed.error}"
        )


def notifications_list(
    github_user_id: Annotated[int | None, typer.Option(min=1, max=2**63 - 1)] = None,
    pending: Annotated[bool, typer.Option("--pending", help="Only those not delivered.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 50,
) -> None:
    """The newest notifications: id, user, version, status, attempts, written at, last error."""
    from collab_billing.billing import notifications

    settings = settings_or_exit()
    engine = current_engine(settings)
    rows = notifications.listing(make_session_factory(engine), github_user_id, pending, limit)
    typer.echo("id\tgithub_user_id\tversion\tstatus\tattempts\tcreated_at\tlast_error")
    for row in rows:
        typer.echo(
            f"{row.id}\t{row.github_user_id}\t{row.version}\t{row.status}\t{row.attempts}\t"
            f"{row.created_at}\t{row.last_error or ''}"
        )


def notifications_replay(
    notification_id: Annotated[
        list[int] | None, typer.Option("--id", min=1, help="This notification (repeatable).")
    ] = None,
    github_user_id: Annotated[
        int | None, typer.Option(min=1, max=2**63 - 1, help="Every notification of this user.")
    ] = None,
    expired: Annotated[
        bool, typer.Option("--expired", help="Every notification given up on.")
    ] = False,
) -> None:
    """Send notifications again (delivered or expired ones) that match every filter given,
    with the same webhook-id and a new retry window."""
    from collab_billing.billing import notifications

    if not (notification_id or github_user_id or expired):
        fail("say which: --id N, --github-user-id N or --expired")
    settings = settings_or_exit()
    engine = migrated_engine(settings)
    count = notifications.replay(
        make_session_factory(engine), notification_id or [], github_user_id, expired
    )
    typer.echo(f"{count} notification(s) queued for delivery again")
