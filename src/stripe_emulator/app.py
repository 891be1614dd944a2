"""The emulator's ASGI application.

`create_app(api_key=None)` returns a Starlette app. Its state:
- `app.state.emulator`: the `Store` (all objects and events; hold `store.lock` to touch it),
- `app.state.faults`: fault injection and rate-limit settings,
- `app.state.requests`: counts of `/v1` requests (see counter.py),
- `app.state.webhooks`: the webhook dispatcher (`wait_idle()` helps tests),
- `app.state.api_key`: the accepted key (None: any `sk_test_...` key),
- `app.state.recorded`: the responses recorded when `record_responses=True`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stripe_emulator import (
    api_billing,
    api_catalog,
    api_coupons,
    api_entitlements,
    api_events,
    api_invoices,
    api_meters,
    api_sessions,
    api_test_clocks,
    catalog_deletions,
    control,
    customer_discounts,
    invoice_pages,
    pages,
)
from stripe_emulator.api import handle_v1
from stripe_emulator.counter import CountingMiddleware, RequestCounts
from stripe_emulator.faults import FaultMiddleware, Faults, install_log_filter
from stripe_emulator.recorder import RecorderMiddleware, Recording
from stripe_emulator.store import Store
from stripe_emulator.webhooks import WebhookDispatcher

_METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]
# Importing the handler modules registers their `/v1` routes with `api.route`.
HANDLER_MODULES = (
    api_catalog,
    api_billing,
    api_sessions,
    api_events,
    catalog_deletions,
    api_coupons,
    api_entitlements,
    api_invoices,
    api_test_clocks,
    api_meters,
    customer_discounts,
)


async def _index(request: Request) -> Response:
    return JSONResponse(
        {"emulator": "stripe_emulator", "api": "/v1", "control": "/_emulator", "livemode": False}
    )


def create_app(
    api_key: str | None = None,
    *,
    public_url: str | None = None,
    webhook_retry_delays: tuple[float, ...] = (1, 2, 4, 8, 16),
    record_responses: bool = False,
) -> Starlette:
    """`public_url` overrides the base of Checkout/portal session URLs (default: the Host);
    `record_responses` keeps every response in `app.state.recorded` (see recorder.py)."""
    store = Store()
    faults = Faults()
    webhooks = WebhookDispatcher(store, retry_delays=webhook_retry_delays)
    install_log_filter()
    recording = Recording()
    counts = RequestCounts()
    middleware = [
        Middleware(CountingMiddleware, counts=counts),
        Middleware(FaultMiddleware, faults=faults),
    ]
    if record_responses:
        middleware.insert(0, Middleware(RecorderMiddleware, recording=recording))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        webhooks.stop()

    app = Starlette(
        routes=[
            # First: the router tries routes in order, and /v1 is where the traffic is.
            Route("/v1/{path:path}", handle_v1, methods=_METHODS),
            Route("/", _index, methods=["GET"]),
            *control.routes,
            *customer_discounts.routes,
            *pages.routes,
            *invoice_pages.routes,
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.emulator = store
    app.state.faults = faults
    app.state.requests = counts
    app.state.webhooks = webhooks
    app.state.api_key = api_key
    app.state.recorded = recording
    app.state.public_url = public_url.rstrip("/") if public_url else None
    return app
