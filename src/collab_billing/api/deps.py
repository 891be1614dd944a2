"""Request dependencies, FastAPI's `Annotated` style: settings, database sessions, the Stripe
gateway and its call slots, and the admin token."""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.stripe_calls import StripeCalls
from collab_billing.config import Settings
from collab_billing.stripe_gateway import StripeGateway


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


# A session takes a pooled connection only when the `def` route (on a worker thread) first
# uses it, and gives it back when the route's transaction ends: never across thread hops. A
# dependency that connected on one thread and closed on another held connections while
# waiting for threads; under load every thread then waited for a connection (pool timeout).
def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


async def get_gateway(request: Request) -> StripeGateway:
    gateway: StripeGateway | None = request.app.state.api_gateway
    if gateway is None:
        raise HTTPException(503, detail="Stripe is not configured: set STRIPE_API_KEY")
    return gateway


async def get_stripe_calls(request: Request) -> StripeCalls:
    calls: StripeCalls = request.app.state.stripe_calls
    return calls


async def get_clock(request: Request) -> Callable[[], datetime]:
    """The service's clock for time-based judgements (the grace of a past-due subscription):
    `create_app(clock=...)` injects it (dev mode reads the emulator's clock; tests read a
    Stripe test clock, over HTTP). It may block: a `def` route reads it on its own thread."""
    clock: Callable[[], datetime] = request.app.state.clock
    return clock


def get_now(request: Request) -> datetime:
    """The clock's reading, for `async def` routes: FastAPI runs this `def` dependency on a
    worker thread (a `def` route takes `ClockDep` instead, saving that thread hop)."""
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


NowDep = Annotated[datetime, Depends(get_now)]
ClockDep = Annotated[Callable[[], datetime], Depends(get_clock)]
GatewayDep = Annotated[StripeGateway, Depends(get_gateway)]
StripeCallsDep = Annotated[StripeCalls, Depends(get_stripe_calls)]

admin_token_header = APIKeyHeader(
    name="Authorization",
    scheme_name="AdminToken",
    description="The admin token (`ADMIN_TOKEN`), bare or as `Bearer <token>`.",
    auto_error=False,
)


def presented_token(header: str) -> str:
    """The token as sent: what follows a `Bearer ` prefix (any case), else the whole header.
    Nothing is stripped: a header of odd whitespace must not become an empty token."""
    scheme, space, rest = header.partition(" ")
    if space and scheme.lower() == "bearer":
        return rest
    return header


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


def check_admin_token(settings: Settings, authorization: str | None) -> None:
    if settings.admin_token is None or not authorization:
        raise _unauthorized("missing Authorization header: send the admin token")
    expected = settings.admin_token.get_secret_value().encode()
    # Starlette decodes header bytes as latin-1: encoding back gives the bytes as sent.
    if not hmac.compare_digest(presented_token(authorization).encode("latin-1"), expected):
        raise _unauthorized("invalid admin token")


def check_single_valued_query(request: Request) -> None:
    """A query parameter given twice, or one the route does not take (a misspelt name), is an
    error: FastAPI would silently use the last one, or ignore it."""
    names = [name for name, _ in request.query_params.multi_items()]
    route = request.scope.get("route")
    taken = _query_names(route) if isinstance(route, APIRoute) else None
    if len(set(names)) == len(names) and (taken is None or taken.issuperset(names)):
        return  # the common case, without building the errors
    counts = Counter(names)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    unknown = sorted(set(counts) - taken) if taken is not None else []
    errors = [
        {
            "type": "repeated_query_parameter",
            "loc": ("query", name),
            "msg": "the query parameter is given more than once",
        }
        for name in repeated
    ] + [
        {"type": "unknown_query_parameter", "loc": ("query", name[:64]), "msg": "not taken here"}
        for name in unknown
    ]
    if errors:
        raise RequestValidationError(errors)


def _query_names(route: APIRoute) -> set[str]:
    """The query parameters a route declares, its dependencies' included (a few: walked at
    each request, as routes cannot be keys of a cache)."""
    names: set[str] = set()
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        names.update(param.alias for param in dependant.query_params)
        pending.extend(dependant.dependencies)
    return names


async def require_admin(
    request: Request, authorization: Annotated[str | None, Security(admin_token_header)]
) -> None:
    """The admin routes' one dependency: the admin token (401), then the query (422). One
    dependency, reading the settings from the app's state, not three: FastAPI's solving of
    each costs more than its check (admin GET /billing/subscriptions)."""
    settings: Settings = request.app.state.settings
    check_admin_token(settings, authorization)
    check_single_valued_query(request)


AdminOnly = [Depends(require_admin)]
