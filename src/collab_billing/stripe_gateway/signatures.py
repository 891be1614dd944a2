"""Webhook signatures, checked with the SDK's verifier."""

from __future__ import annotations

import time

import stripe

# Stripe's own libraries refuse a signature older than this; one dated further in the future
# is refused too (the SDK only bounds the past).
WEBHOOK_TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """A webhook's `Stripe-Signature` does not verify (wrong secret, stale, malformed)."""


def verify_webhook(payload: bytes, signature_header: str, secrets: list[str]) -> None:
    """Verify with the SDK's verifier against each secret (rotation: old and new accepted)."""
    signed_at = _timestamp(signature_header)
    if signed_at is not None and signed_at > time.time() + WEBHOOK_TOLERANCE_SECONDS:
        raise SignatureError("timestamp is in the future")
    last_error = "no webhook secret"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature_header, secret, WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            last_error = str(error)
            continue
        return
    raise SignatureError(last_error)


def _timestamp(header: str) -> int | None:
    """The header's first `t=`, as Stripe's libraries read it; None when there is none."""
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "t":
            return int(value) if value.strip().isdigit() else None  # the verifier refuses junk
    return None
