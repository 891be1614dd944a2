"""Request dependencies: settings, database sessions and admin authentication."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings

# The cheap dependencies are `async def`: FastAPI runs a plain `def` dependency on the thread
# pool, a hop (and GIL hand-offs) per dependency per request.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


def _presented_token(header: str) -> str:
    scheme, _, rest = header.partition(" ")
    if rest and scheme.lower() == "bearer":
        return rest.strip()
    return header.strip()


def token_matches(header: str, settings: Settings) -> bool:
    """Whether an `Authorization` header carries the admin token (bare or Bearer), compared
    in constant time."""
    if settings.admin_token is None:
        return False
    expected = settings.admin_token.get_secret_value().encode()
    return hmac.compare_digest(_presented_token(header).encode(), expected)


async def require_admin(
    request: Request, settings: Annotated[Settings, Depends(get_settings)]
) -> None:
    header = request.headers.get("authorization")
    if settings.admin_token is None or not header:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing Authorization header: send the admin token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not token_matches(header, settings):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="invalid admin token",
            headers={"WWW-Authenticate": "Bearer"},
        )


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AdminOnly = [Depends(require_admin)]
