"""The FastAPI application: routers, error handlers, shared state and the reconciler task."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from collab_billing import metrics
from collab_billing.api import billing, health, operations, usage, users, webhooks
from collab_billing.api.errors import install_error_handlers
from collab_billing.api.limits import BodySizeLimit
from collab_billing.api.rate_limit import PerKeyLimiter
from collab_billing.api.request_ids import RequestIdMiddleware
from collab_billing.api.stripe_calls import StripeCalls
from collab_billing.billing import notify, sender
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.reconcile.budget import record_reads
from collab_billing.reconcile.gauges import DatabaseGauges
from collab_billing.reconcile.leader import start_in_background
from collab_billing.reconcile.run import Reconciler
from collab_billing.reconcile.signals import ActivitySignals
from collab_billing.state.access import AccessRules, system_clock
from collab_billing.stripe_gateway import StripeGateway, gateway_or_none

log = logging.getLogger(__name__)

# The admin routes take small JSON documents; the webhook route allows more (see webhooks).
MAX_BODY_BYTES = 64 * 1024
# Webhook deliveries applied at once per process: each holds a database connection (and on
# SQLite they take turns on the one write lock), so more would only queue inside the database
# while holding threads that the other routes need.
WEBHOOK_WRITERS = 4
HEALTH_CHECKS = 2  # threads that a stuck health check may hold (see `health`)
# GET /billing/subscriptions's reads at once per process (see `billing.list_subscriptions`).
# SQLite reads in the process: more threads do not read faster, they take turns at the GIL
# at each SQLite call. A PostgreSQL read mostly waits on the server, GIL released: threads
# overlap their waits.
ADMIN_READERS = {"sqlite": 2, "postgresql": 8}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the reconciler, the usage sender and the notification sender beside the API, and
    record the process's Stripe reads; on shutdown let them finish their transactions and
    deliveries."""
    settings: Settings = app.state.settings
    gateway: StripeGateway | None = app.state.gateway
    loops = [start_in_background(partial(record_reads, app.state.session_factory), "reads")]
    if settings.reconcile_enabled:
        # The notification sender: the outbox's rows to BILLING_NOTIFY_URLS (leader only).
        notifier = notify.Notifier(settings, app.state.engine, access_clock=app.state.clock)
        loops.append(start_in_background(notifier.run, "notifier"))
        if gateway is None:
            log.warning("reconciler off: STRIPE_API_KEY is not set")
        else:
            reconciler = Reconciler(
                settings,
                app.state.engine,
                gateway,
                signals=app.state.signals,
                clock=app.state.seconds,
                access_clock=app.state.clock,
            )
            loops.append(start_in_background(reconciler.run, "reconciler"))
            usage_sender = sender.UsageSender(
                settings, app.state.engine, access_clock=app.state.clock
            )
            loops.append(start_in_background(usage_sender.run, "usage-sender"))
    try:
        yield
    finally:
        for _, stop in loops:
            stop.set()
        for thread, _ in loops:
            await anyio.to_thread.run_sync(thread.join, 60.0)


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    clock: Callable[[], datetime] = system_clock,
) -> FastAPI:
    """`clock`: the service's "now" (access grace), the one clock of the routes (`NowDep`),
    of the state documents that this app's sessions, reconciler and notification sender write
    (`AccessRules`), of the sweep of ended graces and of the reconciler's polls; dev mode and
    tests pass the emulator's."""
    # FastAPIOffline: FastAPI with /docs served from assets installed with the package, so
    # the docs work without a network (stock FastAPI loads them from a CDN).
    app = FastAPIOffline(
        title="collab-billing",
        summary="Sell a subscription through Stripe and keep the database in step with Stripe.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.clock = clock
    # The same clock in seconds, for the reconciler and its signals: under `dev` a poll is
    # judged by the emulator's time, which test clocks move (a jump past Stripe's 30 days of
    # events is then seen, and answered with a resync, not a silent gap).
    app.state.seconds = lambda: clock().timestamp()
    app.state.engine = engine or make_engine(settings.database_url)
    rules = AccessRules(settings.past_due_grace(), clock)
    app.state.session_factory = make_session_factory(app.state.engine, rules.session_info())
    app.state.gateway = gateway_or_none(settings, metrics.observe_stripe_request)
    app.state.api_gateway = _api_gateway(settings)
    app.state.stripe_calls = StripeCalls(
        settings.api_stripe_concurrency, settings.api_stripe_queue_seconds
    )
    app.state.sync_limiter = PerKeyLimiter(settings.billing_sync_per_minute)
    app.state.signals = ActivitySignals(app.state.session_factory, app.state.seconds)
    app.state.gauges = CollectorRegistry()
    app.state.gauges.register(
        DatabaseGauges(app.state.engine, settings.reconcile_read_budget_share)
    )
    app.state.webhook_writers = anyio.CapacityLimiter(WEBHOOK_WRITERS)
    app.state.health_checks = anyio.CapacityLimiter(HEALTH_CHECKS)
    app.state.admin_readers = anyio.CapacityLimiter(
        ADMIN_READERS.get(app.state.engine.dialect.name, 8)
    )
    app.state.webhook_secrets = settings.webhook_secrets()
    routers = (health.router, operations.router, users.router, billing.router, webhooks.router)
    for router in (*routers, usage.router):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        default=MAX_BODY_BYTES,
        by_path={
            webhooks.PATH: webhooks.MAX_WEBHOOK_BODY_BYTES,
            usage.PATH: usage.MAX_USAGE_BODY_BYTES,
        },
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: even a 413 carries the id
    return app


def _api_gateway(settings: Settings) -> StripeGateway | None:
    """The gateway of the admin routes: a request waits on Stripe for seconds, not the
    minute that the reconciler's reads may take (its timeout, or Stripe's 429s)."""
    api_settings = settings.model_copy(
        update={"stripe_timeout_seconds": settings.api_stripe_timeout_seconds}
    )
    return gateway_or_none(
        api_settings,
        metrics.observe_stripe_request,
        rate_limit_wait_seconds=settings.api_stripe_timeout_seconds,
    )
