"""The FastAPI application: routers, error handlers and shared state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from collab_billing import billing
from collab_billing.api import billing as billing_routes
from collab_billing.api import health, users
from collab_billing.api.limits import BodySizeLimit
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _no_background_work(_app: FastAPI) -> AsyncIterator[None]:
    yield


def create_app(
    settings: Settings, engine: Engine | None = None, lifespan: Lifespan | None = None
) -> FastAPI:
    app = FastAPI(
        title="collab-billing",
        summary="Sell a subscription through Stripe and keep the database in step with Stripe.",
        version="0.1.0",
        lifespan=lifespan or _no_background_work,
    )
    app.state.settings = settings
    app.state.engine = engine or make_engine(settings.database_url)
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.gateway = StripeGateway(settings) if settings.stripe_api_key else None
    app.include_router(health.router)
    app.include_router(users.router)
    app.include_router(billing_routes.router)
    app.add_exception_handler(billing.BillingError, _billing_error)
    app.add_exception_handler(StripeGatewayError, _stripe_error)
    app.add_middleware(BodySizeLimit)
    return app


async def _billing_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, billing.BillingError)
    return JSONResponse({"detail": error.message}, status_code=error.status_code)


async def _stripe_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StripeGatewayError)
    return JSONResponse({"detail": f"Stripe request failed: {error}"}, status_code=502)
