"""Webhook signatures, checked with the SDK's verifier."""

from __future__ import annotations

import stripe


class SignatureError(Exception):
    """A webhook's `Stripe-Signature` does not verify (wrong secret, stale, malformed)."""


WEBHOOK_TOLERANCE_SECONDS = 300


def verify_webhook(payload: bytes, signature_header: str, secrets: list[str]) -> None:
    """Verify with the SDK's verifier against each secret (rotation: old and new accepted)."""
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
