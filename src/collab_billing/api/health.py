"""`GET /healthz`: the database accepts writes, and the reconciler's state.

503 when the database cannot be written within `HEALTH_TIMEOUT_SECONDS` (down, refusing
connections, read-only, or its write lock held that long). The reconciler's state is reported
for the operator and does not fail the check: a reconciler that is behind still serves.
"""

from __future__ import annotations

import logging

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Engine, delete, false

from collab_billing.api.errors import DATABASE_UNAVAILABLE
from collab_billing.db.models import User
from collab_billing.reconcile.run import read_status

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)

HEALTH_TIMEOUT_SECONDS = 5.0


class ReconcilerHealth(BaseModel):
    leader: str
    last_complete_poll_at: int | None
    lag_seconds: float | None
    pending_events: int
    failed_events: int


class Health(BaseModel):
    status: str
    database: str
    reconciler: ReconcilerHealth | None = None


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database cannot be written"}},
)
async def healthz(request: Request) -> Health | JSONResponse:
    state = request.app.state
    with anyio.move_on_after(HEALTH_TIMEOUT_SECONDS):
        try:
            # Abandoned on timeout: a check stuck on a lock must not hold the answer. The
            # limiter bounds how many such threads there can be.
            reconciler = await anyio.to_thread.run_sync(
                check_database, state.engine, limiter=state.health_checks, abandon_on_cancel=True
            )
        except DATABASE_UNAVAILABLE as error:
            log.warning("health check failed", extra={"reason": type(error).__name__})
            return _unavailable("unreachable")
        return Health(status="ok", database="ok", reconciler=reconciler)
    return _unavailable("timeout")


def check_database(engine: Engine) -> ReconcilerHealth:
    """Raises unless the database takes a write; the reconciler's state from its tables."""
    with engine.connect() as connection:
        # A write that changes nothing, rolled back: PostgreSQL refuses it when read-only,
        # SQLite takes its write lock for it.
        connection.execute(delete(User).where(false()))
        connection.rollback()
    status = read_status(engine)
    return ReconcilerHealth(
        leader=status.leader,
        last_complete_poll_at=status.last_drain_at,
        lag_seconds=status.lag,
        pending_events=len(status.pending),
        failed_events=len(status.failed),
    )


def _unavailable(database: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "database": database}, status_code=503)
