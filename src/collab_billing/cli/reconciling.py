"""`reconcile` and `resync`: Stripe into the database, and the reconciler's status."""

from __future__ import annotations

import os
import signal
import threading
import time
from functools import partial
from typing import Annotated

import prometheus_client
import typer
from sqlalchemy import Engine

from collab_billing.cli.common import (
    current_engine,
    fail,
    gateway_or_exit,
    migrated_engine,
    settings_or_exit,
)
from collab_billing.config import Settings
from collab_billing.db.engine import make_session_factory
from collab_billing.dev_clock import access_clock
from collab_billing.logs import configure_logging
from collab_billing.reconcile import budget
from collab_billing.reconcile.gauges import DatabaseGauges
from collab_billing.reconcile.leader import start_in_background
from collab_billing.reconcile.resync import run_with_progress
from collab_billing.reconcile.run import Reconciler, cadence_of, read_status
from collab_billing.reconcile.signals import ActivitySignals
from collab_billing.state.access import AccessRules, Clock, system_clock
from collab_billing.stripe_gateway import StripeGatewayError

WORKER_NICENESS = 10  # `reconcile`'s CPU priority below `serve` (and its database's server)


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
    # Imported here, like `usage`'s: the billing stack is heavy, and `reconcile --once` (a
    # catch-up, timed from the process's start) never uses it.
    from collab_billing.billing import notify
    from collab_billing.billing.sender import UsageSender

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
    # Per kind; "deleted": rows of objects Stripe no longer shows (their events unread).
    mirrored = "".join(
        f", {report.seen[kind]} {kind}s seen, {report.written[kind]} written"
        + (f", {report.deleted[kind]} deleted" if report.deleted[kind] else "")
        for kind in dict.fromkeys([*report.seen, *report.deleted])
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
