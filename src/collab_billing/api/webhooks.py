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
from collab_billing.mirror.registry import relevant_event_types
from collab_billing.reconcile.apply import Applier
from collab_billing.stripe_gateway import Event, EventShapeError, SignatureError, verify_webhook

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
    if event["type"] not in relevant_event_types():
        # Acknowledge without storing: nothing in the database depends on it.
        metrics.WEBHOOK_DELIVERIES.labels("ignored").inc()
        return WebhookAck(received=True, outcome="ignored")
    try:
        typed = Event.from_json(payload)
    except EventShapeError as error:
        _reject("bad_payload", f"the event does not fit Stripe's schema: {error}")
    with metrics.WEBHOOK_DELIVERIES_IN_PROGRESS.track_inprogress():
        outcome = await anyio.to_thread.run_sync(_apply, request.app.state, typed)
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


def _apply(state: Any, event: Event) -> str:
    applier = Applier(state.session_factory, state.gateway, source="webhook")
    return applier.apply([event]).by_event.get(event.id, "duplicate")


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
