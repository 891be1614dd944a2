"""Error answers: every failure is a JSON document with a `detail` that says what is wrong,
and never echoes what cannot be written as JSON, nor a secret."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as db_errors

from collab_billing import metrics
from collab_billing.api.stripe_calls import StripeBusy
from collab_billing.billing import BillingError
from collab_billing.billing.errors import InvalidField
from collab_billing.stripe_gateway import StripeGatewayError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"
# What a database that is down, restarting, refusing connections or locked raises; anything
# else (a constraint, a bug) stays a 500.
DATABASE_UNAVAILABLE = (
    db_errors.OperationalError,
    db_errors.InterfaceError,
    db_errors.TimeoutError,
)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(BillingError, _billing_error)
    app.add_exception_handler(StripeGatewayError, _stripe_failed)
    app.add_exception_handler(StripeBusy, _stripe_busy)
    for error_class in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error_class, _database_unavailable)
    app.add_exception_handler(Exception, _internal_error)


async def _invalid_request(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return JSONResponse({"detail": [_renderable(e) for e in error.errors()]}, status_code=422)


def _renderable(error: dict[str, Any]) -> Any:
    """FastAPI's error entry, without the parts that cannot be written as strict JSON (a
    non-finite number, a lone surrogate, bytes that are not UTF-8): those were 500s."""
    kept = {key: value for key, value in error.items() if key in ("type", "loc", "msg")}
    for optional in ("input", "ctx"):
        if optional in error and _is_json(error[optional]):
            kept[optional] = error[optional]
    if _is_json(kept):
        return jsonable_encoder(kept)
    return {"type": "invalid", "msg": "an invalid value (not shown: it cannot be written as JSON)"}


def _is_json(value: Any) -> bool:
    try:
        json.dumps(jsonable_encoder(value), allow_nan=False, ensure_ascii=False).encode()
    except (ValueError, TypeError):  # UnicodeError is a ValueError
        return False
    return True


async def _billing_error(_request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, BillingError)
    if isinstance(error, InvalidField):
        return JSONResponse({"detail": error.details()}, status_code=error.status_code)
    return JSONResponse({"detail": error.message, **error.extra}, status_code=error.status_code)


async def _stripe_failed(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StripeGatewayError)
    log.warning(
        "Stripe request failed",
        extra={
            "path": request.url.path,
            "stripe_error": error.kind,
            "stripe_http_status": error.http_status,
        },
    )
    if error.http_status == 429:  # Stripe's rate limit: the client retries when Stripe said
        wait = str(math.ceil(error.retry_after or float(RETRY_AFTER_SECONDS)))
        detail = f"Stripe is rate limiting this account: retry in {wait} s"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": wait})
    return JSONResponse({"detail": f"Stripe request failed: {error}"}, status_code=502)


async def _stripe_busy(request: Request, _error: Exception) -> JSONResponse:
    log.warning(
        "Stripe is slow: every slot for Stripe calls is taken", extra={"path": request.url.path}
    )
    return JSONResponse(
        {"detail": "Stripe is answering slowly and too many requests wait on it: retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    metrics.DATABASE_UNAVAILABLE.inc()
    # The driver's first line says what happened (refused, terminated, locked) and names no
    # password; the statement and its parameters are left out.
    reason = str(getattr(error, "orig", None) or type(error).__name__).splitlines()[0]
    log.warning("database unavailable", extra={"path": request.url.path, "reason": reason})
    return JSONResponse(
        {"detail": "the database is unavailable: retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _internal_error(request: Request, _error: Exception) -> JSONResponse:
    # Logged with its traceback by the request-id middleware; the answer says only where to look.
    request_id = getattr(request.state, "request_id", "?")
    # Starlette raises the error again after this answer (for the server to log), and uvicorn
    # then drops the connection: the client is told, or its next request on it is reset.
    return JSONResponse(
        {"detail": f"internal error: see the service's log for request {request_id}"},
        status_code=500,
        headers={"Connection": "close"},
    )
