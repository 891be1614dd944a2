"""Stripe-shaped errors: `{"error": {"type", "code", "message", "param", "doc_url"}}`.

Stripe omits `code` and `param` when they do not apply (the OpenAPI schema types them as
non-nullable strings), so we do the same.
"""

from __future__ import annotations

from typing import Any

INVALID_REQUEST = "invalid_request_error"
API_ERROR = "api_error"
IDEMPOTENCY_ERROR = "idempotency_error"


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = "https://stripe.com/docs/error-codes/" + self.code.replace("_", "-")
        if self.param is not None:
            error["param"] = self.param
        return {"error": error}


def not_found(kind: str, object_id: str, param: str = "id") -> StripeError:
    return StripeError(404, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


def missing(param: str) -> StripeError:
    return StripeError(
        400, f"Missing required param: {param}.", code="parameter_missing", param=param
    )


def unknown(param: str) -> StripeError:
    return StripeError(
        400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param
    )


def invalid(param: str, message: str, code: str | None = None) -> StripeError:
    return StripeError(400, message, code=code, param=param)


def bad_request(message: str, param: str | None = None) -> StripeError:
    return StripeError(400, message, param=param)


def check_currency(expected: str, currency: str, param: str | None = None) -> None:
    """Stripe bills a subscription, and its customer, in one currency."""
    if currency != expected:
        raise bad_request(
            f"The price specified only supports `{currency}`. This doesn't match the expected "
            f"currency: `{expected}`.",
            param,
        )


def unrecognized_url(method: str, path: str) -> StripeError:
    return StripeError(
        404,
        f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
        "or we can help at https://support.stripe.com/.",
    )


def rate_limited(retry_after: int = 1) -> StripeError:
    return StripeError(
        429,
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        headers={"Retry-After": str(retry_after)},
    )
