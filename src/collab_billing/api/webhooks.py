"""`POST /stripe/webhooks`: Stripe-signed events into the same applier as polling."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel

from collab_billing import metrics
from collab_billing.api.schemas import ErrorResponse
from collab_billing.reconcile.apply import Applier
from collab_billing.stripe_gateway import SignatureError, verify_webhook

router = APIRouter(tags=["webhooks"])


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
        metrics.WEBHOOK_DELIVERIES.labels("bad_signature").inc()
        raise HTTPException(400, detail="missing Stripe-Signature header")
    try:
        verify_webhook(payload, stripe_signature, secrets)
        event: dict[str, Any] = json.loads(payload)
    except (SignatureError, ValueError) as error:
        metrics.WEBHOOK_DELIVERIES.labels("bad_signature").inc()
        raise HTTPException(400, detail=f"invalid webhook: {error}") from None
    if not isinstance(event, dict) or event.get("object") != "event" or "data" not in event:
        metrics.WEBHOOK_DELIVERIES.labels("bad_payload").inc()
        raise HTTPException(400, detail="the payload is not a Stripe event")
    applier: Applier = request.app.state.applier
    # The applier is synchronous (database and Stripe I/O): run it off the event loop.
    stats = await anyio.to_thread.run_sync(applier.apply, [event])
    metrics.record_outcomes(stats.outcomes)
    outcome = next(iter(stats.outcomes), ("applied", ""))[0]
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    return WebhookAck(received=True, outcome=outcome)
