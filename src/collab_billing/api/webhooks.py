"""`POST /stripe/webhooks`: Stripe-signed events into the same applier as polling.

The signature is checked with the official SDK's verifier (HMAC-SHA256 over `t.payload`,
constant-time compare, 300 s tolerance, any of several `v1` signatures, any of the configured
secrets). A verified event goes through `Applier.apply`, the code path polling uses, so the
`processed_stripe_events` ledger makes an event seen by both (or delivered twice) apply once.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel

from collab_billing import metrics
from collab_billing.api.schemas import ErrorResponse
from collab_billing.reconcile.events import RELEVANT_TYPES
from collab_billing.reconcile.run import TimedApplier
from collab_billing.stripe_gateway import SignatureError, verify_webhook

router = APIRouter(tags=["webhooks"])
log = logging.getLogger(__name__)


class WebhookAck(BaseModel):
    received: bool
    outcome: str


@router.post(
    "/stripe/webhooks",
    response_model=WebhookAck,
    responses={
        400: {"model": ErrorResponse, "description": "Missing, bad or stale signature"},
        404: {"model": ErrorResponse, "description": "Webhooks are off (no secret)"},
    },
    summary="Receive a Stripe event (signed with STRIPE_WEBHOOK_SECRET)",
)
async def receive_webhook(
    request: Request, stripe_signature: str | None = Header(default=None)
) -> WebhookAck:
    secrets: list[str] = request.app.state.webhook_secrets
    if not secrets:
        raise HTTPException(404, detail="webhooks are off: set STRIPE_WEBHOOK_SECRET")
    payload = await request.body()
    if not stripe_signature:
        _reject("bad_signature", "missing Stripe-Signature header")
    try:
        verify_webhook(payload, stripe_signature, secrets)
    except (SignatureError, ValueError) as error:
        _reject("bad_signature", f"invalid Stripe-Signature: {error}")
    try:
        event: Any = json.loads(payload)
    except ValueError:
        _reject("bad_payload", "the payload is not JSON")
    if not _is_event(event):
        _reject("bad_payload", "the payload is not a Stripe event")
    if event["type"] not in RELEVANT_TYPES:
        # Acknowledge without storing: nothing in the database depends on it.
        metrics.WEBHOOK_DELIVERIES.labels("ignored").inc()
        return WebhookAck(received=True, outcome="ignored")
    # One applier per delivery: its per-batch read cache must not be shared between threads.
    applier = TimedApplier(
        request.app.state.session_factory, request.app.state.gateway, source="webhook"
    )
    # The applier is synchronous (database and Stripe I/O): run it off the event loop.
    stats = await anyio.to_thread.run_sync(applier.apply, [event])
    metrics.record_outcomes(stats.outcomes)
    outcome = next(iter(stats.outcomes), ("applied", ""))[0]
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    log.info(
        "webhook",
        extra={
            "stripe_event_id": event["id"],
            "stripe_event_type": event["type"],
            "outcome": outcome,
        },
    )
    return WebhookAck(received=True, outcome=outcome)


def _is_event(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("object") == "event"
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    )


def _reject(outcome: str, detail: str) -> NoReturn:
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    log.warning("webhook rejected", extra={"outcome": outcome, "reason": detail})
    raise HTTPException(400, detail=detail)
