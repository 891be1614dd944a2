"""The `collab-billing` command line."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Annotated, NoReturn

import prometheus_client
import typer
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from collab_billing import metrics
from collab_billing.billing.sender import UsageSender, read_usage_status
from collab_billing.config import Settings, SettingsError, load_settings
from collab_billing.db import queries
from collab_billing.db.engine import (
    make_engine,
    make_session_factory,
    shown_database_url,
    transaction,
)
from collab_billing.db.migrate import known_revisions, move_to, revisions, upgrade_to_head
from collab_billing.dev_clock import access_clock
from collab_billing.logs import configure_logging
from collab_billing.reconcile import budget
from collab_billing.reconcile.gauges import DatabaseGauges
from collab_billing.reconcile.leader import start_in_background
from collab_billing.reconcile.resync import run_with_progress
from collab_billing.reconcile.run import Reconciler, cadence_of, read_status
from collab_billing.reconcile.signals import ActivitySignals
from collab_billing.state.access import AccessRules, Clock, system_clock
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError, gateway_or_none

app = typer.Typer(
    help="collab-billing: sell a subscription through Stripe and keep the database in step.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
users_app = typer.Typer(help="Manage the users that can subscribe.", no_args_is_help=True)
app.add_typer(users_app, name="users")

EXIT_USAGE = 2
WORKER_NICENESS = 10  # `reconcile`'s CPU priority below `serve` (and its database's server)
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


@app.command()
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


@users_app.command("add")
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


@users_app.command("list")
def users_list() -> None:
    """List the users, one per line."""
    settings = settings_or_exit()
    engine = current_engine(settings)
    with make_session_factory(engine)() as session:
        for user in queries.list_users(session):
            typer.echo(f"{user.github_user_id}\t{user.github_login}\t{user.email_address or ''}")


@app.command()
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


@app.command()
def dev(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the API.")] = 8080,
    emulator_port: Annotated[int, typer.Option(min=0, max=65535)] = 12111,
) -> None:
    """Run everything locally: SQLite, the Stripe emulator, the API and the reconciler."""
    from collab_billing.devmode import run_dev

    run_dev(api_port=port, emulator_port=emulator_port, admin_token=secrets.token_urlsafe(24))


@app.command("stripe-emulator")
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


@app.command()
def reconcile(
    once: Annotated[bool, typer.Option("--once", help="Drain the events and exit.")] = False,
    show_status: Annotated[bool, typer.Option("--status", help="Show the state and exit.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve Prometheus metrics on 127.0.0.1:PORT."),
    ] = None,
) -> None:
    """Run the reconciler alone: Stripe events into the database (at a lower CPU priority than
    `serve`: nice +10)."""
    settings = settings_or_exit()
    configure_logging(settings)
    if show_status:
        print_status(current_engine(settings), settings)
        return
    engine = migrated_engine(settings)
    # Beside `serve` on one machine, a catch-up gives webhooks and the API the CPU first, so
    # their latency does not follow the drain's; on a machine of its own it changes nothing.
    os.nice(WORKER_NICENESS)
    clock = access_clock(settings, engine)
    reconciler = Reconciler(settings, engine, gateway_or_exit(settings), access_clock=clock)
    if metrics_port is not None:
        # A worker has no API to hang /metrics on: prometheus-client's own small server.
        share = settings.reconcile_read_budget_share
        prometheus_client.REGISTRY.register(DatabaseGauges(engine, share))
        try:
            prometheus_client.start_http_server(metrics_port, addr="127.0.0.1")
        except OSError as error:  # the port is taken
            fail(f"cannot serve metrics on 127.0.0.1:{metrics_port}: {error.strerror}")
    # The reads are recorded as they go, not only when a drain ends: a killed drain loses few.
    reads, reads_stop = start_in_background(
        partial(budget.record_reads, reconciler.factory), "reads"
    )
    try:
        if once:
            drain_once(reconciler)
        else:
            run_worker(settings, engine, reconciler, clock)
    finally:
        reads_stop.set()
        reads.join(60.0)


def run_worker(
    settings: Settings, engine: Engine, reconciler: Reconciler, clock: Clock = system_clock
) -> None:
    """The reconciler's loop until SIGTERM, with the notification and usage senders beside it
    (each elected leader the same way)."""
    from collab_billing.billing import notify

    stop = threading.Event()
    # SIGTERM (and Ctrl-C) end the loop after the current transaction, with exit code 0; set
    # before the senders start, so a SIGTERM right after their first delivery does too.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    loops = [
        start_in_background(notify.Notifier(settings, engine, access_clock=clock).run, "notifier"),
        start_in_background(UsageSender(settings, engine).run, "usage-sender"),
    ]
    try:
        reconciler.run(stop)
    finally:
        for _, loop_stop in loops:
            loop_stop.set()
        for thread, _ in loops:
            thread.join(60.0)


def drain_once(reconciler: Reconciler) -> None:
    """One complete poll; a failed one (Stripe or the database down) is logged in one line and
    tried again with backoff, from what the failed one committed."""
    if not reconciler.lock.acquire():
        fail("another reconciler is active on this database")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    reconciler.run(stop, once=True)
    report = reconciler.last_report
    if report is None:
        return
    stats = report.stats
    typer.echo(
        f"drained: {report.events_seen} events read in {report.requests} requests, "
        f"{stats.total('applied')} applied, {stats.total('stale')} stale, "
        f"{stats.total('duplicate')} duplicate, {stats.total('unmatched')} unmatched, "
        f"{stats.total('failed')} failed, {stats.stripe_reads} objects re-read"
    )


def gateway_or_exit(settings: Settings) -> StripeGateway:
    gateway = gateway_or_none(settings, metrics.observe_stripe_request)
    if gateway is None:
        fail("STRIPE_API_KEY is not set")
    return gateway


def print_status(engine: Engine, settings: Settings | None = None) -> None:
    status = read_status(engine)
    now = int(status.read_at)

    def ago(value: int | None) -> str:
        if value is None:
            return "never"
        if value > now:  # an event's `created` by a clock ahead of ours (`dev`'s emulator)
            return f"{value} ({value - now} s ahead of this machine's clock)"
        return f"{value} ({now - value} s ago)"

    lag = "unknown (never polled)" if status.lag is None else f"{status.lag:.0f} s"
    typer.echo(f"cursor (newest event created): {ago(status.cursor)}")
    typer.echo(f"newest applied event created: {ago(status.newest_applied)}")
    typer.echo(f"lag (behind Stripe at most):   {lag}")
    typer.echo(f"last complete poll:            {ago(status.last_drain_at)}")
    typer.echo(f"last resync:                   {ago(status.last_resync_at)}")
    typer.echo(f"leader:                        {status.leader}")
    if settings is not None:
        print_freshness(engine, settings, now)
    typer.echo(f"pending events: {len(status.pending)} ({len(status.failed)} failed)")
    for pending in status.pending:
        state = (
            f"failed {pending.attempts}x: {pending.last_error}"
            if pending.last_error
            else ("waiting behind an earlier failure")
        )
        typer.echo(f"  {pending.event.id} {pending.event.type} {pending.object_id}: {state}")


def print_freshness(engine: Engine, settings: Settings, now: int) -> None:
    """The read budget, and the poll mode and interval it allows now (docs/reconciliation.md)."""
    factory = make_session_factory(engine)
    spent = budget.read_budget(factory, now, settings.reconcile_read_budget_share)
    signals = ActivitySignals(factory).read()
    cadence = cadence_of(settings)
    typer.echo(
        f"stripe reads (30 days):        {spent.reads_30d} of {spent.allowed} allowed "
        f"({settings.reconcile_read_budget_share:g} x max(10,000, 500 x "
        f"{spent.transactions_30d} transactions))"
    )
    typer.echo(
        f"poll mode:                     {cadence.mode(signals, spent, now)}, "
        f"every {cadence.interval(signals, spent, now):.0f} s now"
    )


@app.command()
def resync(
    github_user_id: Annotated[int | None, typer.Option(min=1, max=2**63 - 1)] = None,
    requests_per_second: Annotated[
        float | None, typer.Option(min=0.1, help="Throttle Stripe requests (default: setting).")
    ] = None,
) -> None:
    """Rebuild customers and every mirrored type from Stripe's list endpoints."""
    overrides = {"stripe_requests_per_second": requests_per_second} if requests_per_second else {}
    settings = settings_or_exit(**overrides)
    configure_logging(settings)
    engine = migrated_engine(settings)
    # The state documents it changes judge access by the service's clock and grace setting.
    rules = AccessRules(settings.past_due_grace(), access_clock(settings, engine))
    factory = make_session_factory(engine, rules.session_info())
    try:
        report = run_with_progress(factory, gateway_or_exit(settings), github_user_id)
    except StripeGatewayError as error:  # a list read failed past its retries: nothing to go on
        said = " ".join(str(error).split())  # the SDK's messages run over several lines
        fail(f"resync stopped: {said}; what it wrote is kept, run it again", code=1)
    finally:
        budget.flush_reads(factory, time.time())
    mirrored = "".join(
        f", {seen} {kind}s seen, {report.written[kind]} written"
        for kind, seen in report.seen.items()
    )
    typer.echo(
        f"resync done: {report.customers_seen} customers seen, "
        f"{report.customers_linked} linked{mirrored}"
    )
    if report.failed:
        failed = ", ".join(f"{count} customers' {kind}s" for kind, count in report.failed.items())
        fail(
            f"could not read {failed} from Stripe (logged): their rows stay as they were "
            "until their next event or resync; run `collab-billing resync` again",
            code=1,
        )


@app.command()
def usage(
    show_status: Annotated[
        bool, typer.Option("--status", help="Show the usage outbox and exit.")
    ] = False,
    send: Annotated[
        bool, typer.Option("--send", help="Run the usage sender alone until SIGTERM.")
    ] = False,
) -> None:
    """The usage outbox: records waiting for, sent to or refused by Stripe."""
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


notifications_app = typer.Typer(
    help="The billing.state.updated notifications (the outbox).", no_args_is_help=True
)
app.add_typer(notifications_app, name="notifications")


@notifications_app.command("list")
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


@notifications_app.command("replay")
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
