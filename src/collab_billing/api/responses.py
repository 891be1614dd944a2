"""Documented error responses shared by the routes (OpenAPI `responses=`), and the answer of a
`def` route as its model's JSON (`model_response`)."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from collab_billing.api.schemas import ErrorResponse

JSON = "application/json"

Responses = dict[int | str, dict[str, Any]]

ADMIN_ERRORS: Responses = {
    401: {"model": ErrorResponse, "description": "Missing or wrong admin token"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    503: {
        "model": ErrorResponse,
        "description": "The database is unavailable (or, on Stripe routes, Stripe is not "
        "configured or too slow): retry later",
    },
}
STRIPE_ERRORS: Responses = {
    502: {"model": ErrorResponse, "description": "Stripe failed or refused the request"},
}


def model_response(model: BaseModel) -> Response:
    """A `def` route's answer, encoded as it is. Returned as a model, FastAPI would validate it
    again against `response_model` on another worker thread (a second thread hop a request);
    it was validated when built, and the route's `response_model` still documents it."""
    return Response(model.model_dump_json(), media_type=JSON)
