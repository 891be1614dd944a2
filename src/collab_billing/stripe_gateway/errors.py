"""What a failed Stripe call becomes outside the gateway: errors that carry Stripe's own error
type and message (never a secret), and how long a 429 asks us to wait."""

from __future__ import annotations

import stripe

MAX_RETRY_AFTER_SECONDS = 30.0


class StripeNotConfigured(Exception):
    """No API key (or no price): the route answers 503."""


class StripeGatewayError(Exception):
    """Stripe failed or refused; `kind` is Stripe's error type. Never carries a secret."""

    def __init__(
        self, kind: str, message: str, http_status: int | None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"Stripe {kind}: {message}")
        self.kind = kind
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after  # a 429's: when Stripe said to try again


class DuplicateMeterEvent(StripeGatewayError):
    """Stripe refused a meter event because its `identifier` was already used: the event was
    recorded before (a send whose answer was lost), so for the sender it counts as sent."""


def is_duplicate_identifier(error: StripeGatewayError) -> bool:
    return error.http_status in (400, 409) and "already exists with identifier" in error.message


def is_combined_currencies(error: StripeGatewayError) -> bool:
    """Stripe's refusal of a subscription or Checkout in another currency than its customer's
    live ones ("You cannot combine currencies on a single customer. ..."): an
    invalid_request_error with no code, so known by its words."""
    return error.http_status == 400 and "cannot combine currencies" in error.message.lower()


def retry_after_seconds(error: stripe.StripeError, attempt: int) -> float:
    header = (error.headers or {}).get("retry-after") or (error.headers or {}).get("Retry-After")
    try:
        seconds = float(header) if header is not None else 0.5 * 2**attempt
    except ValueError:
        seconds = 0.5 * 2**attempt
    return min(max(seconds, 0.05), MAX_RETRY_AFTER_SECONDS)


def gateway_error(error: stripe.StripeError) -> StripeGatewayError:
    kind = "api_connection_error"
    if error.error is not None and error.error.type:
        kind = str(error.error.type)
    elif not isinstance(error, stripe.APIConnectionError):
        kind = type(error).__name__
    # The SDK's messages never contain the key; we still keep only Stripe's own message.
    message = str(error.user_message or "no message")
    retry_after = retry_after_seconds(error, 0) if error.http_status == 429 else None
    return StripeGatewayError(kind, message, error.http_status, retry_after)
