"""The FastAPI application: routers, error handlers, shared state and the reconciler task."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from collab_billing import billing, metrics
from collab_billing.api import billing as billing_routes
from collab_billing.api import health, operations, users, webhooks
from collab_billing.api.limits import BodySizeLimit
from collab_billing.api.request_ids import RequestIdMiddleware
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.reconcile.run import Reconciler, start_in_background
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError, gateway_or_none

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the reconciler beside the API; on shutdown let it finish its transaction."""
    settings: Settings = app.state.settings
    gateway: StripeGateway | None = app.state.gateway
    try:
        if not (settings.reconcile_enabled and gateway is not None):
            if settings.reconcile_enabled:
                log.warning("reconciler off: STRIPE_API_KEY is not set")
            yield
            return
        thread, stop = start_in_background(Reconciler(settings, app.state.engine, gateway))
        try:
            yield
        finally:
            stop.set()
            await anyio.to_thread.run_sync(thread.join, 60.0)
    finally:
        pass


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    app = FastAPI(
        title="collab-billing",
        summary="Sell a subscription through Stripe and keep the database in step with Stripe.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.gateway = gateway_or_none(settings, metrics.observe_stripe_request)
    app.state.webhook_secrets = settings.webhook_secrets()
    for router in (
        health.router,
        operations.router,
        users.router,
        billing_routes.router,
        webhooks.router,
    ):
        app.include_router(router)
    app.add_exception_handler(billing.BillingError, _billing_error)
    app.add_exception_handler(StripeGatewayError, _stripe_error)
    # Innermost first: the fast path answers inside the body limit and the request id.
    app.add_middleware(BodySizeLimit)
    app.add_middleware(RequestIdMiddleware)  # outermost: even a 413 carries the id
    return app


async def _billing_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, billing.BillingError)
    return JSONResponse({"detail": error.message}, status_code=error.status_code)


async def _stripe_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StripeGatewayError)
    log.warning(
        "Stripe request failed",
        extra={
            "path": request.url.path,
            "stripe_error": error.kind,
            "stripe_http_status": error.http_status,
        },
    )
    return JSONResponse({"detail": f"Stripe request failed: {error}"}, status_code=502)
