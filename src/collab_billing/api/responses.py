"""Documented error responses shared by the routes (OpenAPI `responses=`)."""

from __future__ import annotations

from typing import Any

from collab_billing.api.schemas import ErrorResponse

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
