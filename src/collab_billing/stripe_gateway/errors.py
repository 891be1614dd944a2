"""What the gateway raises: Stripe's error type and message, never a secret."""

from __future__ import annotations

import stripe


class StripeNotConfigured(Exception):
    """No API key (or no price): the route answers 503."""


class StripeGatewayError(Exception):
    """Stripe failed or refused; `kind` is Stripe's error type, never a secret."""

    def __init__(self, kind: str, message: str, http_status: int | None) -> None:
        super().__init__(f"Stripe {kind}: {message}")
        self.kind = kind
        self.message = message
        self.http_status = http_status


class RawError(Exception):
    """A failed GET of the direct path; `_call` turns it into a StripeGatewayError."""

    def __init__(
        self, http_status: int | None, kind: str, message: str, headers: dict[str, str]
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.http_status = http_status
        self.kind = kind
        self.message = message
        self.headers = headers


def gateway_error(error: stripe.StripeError) -> StripeGatewayError:
    kind = "api_connection_error"
    if error.error is not None and error.error.type:
        kind = str(error.error.type)
    elif not isinstance(error, stripe.APIConnectionError):
        kind = type(error).__name__
    # The SDK's message never contains the key; we still keep only Stripe's own message.
    message = error.user_message or "no message"
    return StripeGatewayError(kind, str(message), error.http_status)
