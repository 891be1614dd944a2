"""Webhook signatures, checked with the SDK's verifier."""

from __future__ import annotations

import time

import stripe

# Stripe's own libraries refuse a signature older than this; a timestamp further in the
# future than this is refused too (the SDK only bounds the past).
WEBHOOK_TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """A webhook's `Stripe-Signature` does not verify (wrong secret, stale, malformed)."""


def verify_webhook(payload: bytes, signature_header: str, secrets: list[str]) -> None:
    """Verify with the SDK's verifier against each secret (rotation: old and new accepted)."""
    last_error = "no webhook secret"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature_header, secret, WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            last_error = str(error)
            continue
        _refuse_future_timestamp(signature_header)
        return
    raise SignatureError(last_error)


def _refuse_future_timestamp(signature_header: str) -> None:
    for part in signature_header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and int(value) > time.time() + WEBHOOK_TOLERANCE_SECONDS:
            raise SignatureError("the signature's timestamp is in the future")
