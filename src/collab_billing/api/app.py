"""The FastAPI application: routers, error handlers and shared state."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import Engine

from collab_billing.api import health, users
from collab_billing.api.limits import BodySizeLimit
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory

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
    app.include_router(health.router)
    app.include_router(users.router)
    app.add_middleware(BodySizeLimit)
    return app
