"""Documented error responses shared by the routes (OpenAPI `responses=`)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from collab_billing.api.schemas import ErrorResponse

Responses = dict[int | str, dict[str, Any]]

AUTH_ERRORS: Responses = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin token"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
}
STRIPE_ERRORS: Responses = {
    502: {"model": ErrorResponse, "description": "Stripe failed or refused the request"},
    503: {"model": ErrorResponse, "description": "Stripe is not configured"},
}


class JSONBytes(Response):
    """A JSON answer serialized by orjson, for documents built by hand on hot paths.

    Datetimes come out as pydantic writes them for the response models: naive ones (SQLite
    hands times back without a zone; every stored time is UTC) as UTC, UTC as `Z`.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z)
