"""`POST /stripe/webhooks`: Stripe-signed events into the same applier as polling.

The signature is checked with the official SDK's verifier (HMAC-SHA256 over `t.payload`,
constant-time compare, any of several `v1` signatures, any of the configured secrets), and a
timestamp outside the tolerance either way is refused (the SDK checks only the past). A
verified event goes through `Applier.apply`, the code path polling uses, so the
`processed_stripe_events` ledger makes an event seen by both (or delivered twice) apply once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any, NoReturn

import anyio
from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel
from starlette.datastructures import State

from collab_billing import metrics
from collab_billing.api.schemas import ErrorResponse
from collab_billing.api.strict_json import parse_json
from collab_billing.mirror.registry import RELEVANT_TYPES
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.groups import group_events
from collab_billing.stripe_gateway import Event, EventShapeError, SignatureError, verify_webhook
from collab_billing.stripe_gateway.events import MAX_CREATED, MIN_CREATED

router = APIRouter(tags=["webhooks"])
log = logging.getLogger(__name__)

# Stripe's events are small, but an invoice or subscription with many items can pass the
# admin routes' 64 KB (a genuine 70 KB event was refused): Stripe's own limit is far above.
MAX_WEBHOOK_BODY_BYTES = 1024 * 1024
PATH = "/stripe/webhooks"


class WebhookAck(BaseModel):
    received: bool
    outcome: str


@router.post(
    PATH,
    response_model=WebhookAck,
    responses={
        400: {"model": ErrorResponse, "description": "Missing, bad or stale signature or event"},
        404: {"model": ErrorResponse, "description": "Webhooks are off (no secret)"},
        413: {"model": ErrorResponse, "description": "Body larger than 1 MB"},
        503: {"model": ErrorResponse, "description": "The database is unavailable"},
    },
    summary="Receive a Stripe event (signed with STRIPE_WEBHOOK_SECRET)",
)
async def receive_webhook(
    request: Request, stripe_signature: Annotated[str | None, Header()] = None
) -> WebhookAck:
    state = request.app.state
    if not state.webhook_secrets:
        raise HTTPException(404, detail="webhooks are off: set STRIPE_WEBHOOK_SECRET")
    payload = await request.body()
    _verify_signature(payload, stripe_signature, state.webhook_secrets)
    event = _parse_event(payload)
    await _check_created(event, state)
    if event["type"] not in RELEVANT_TYPES:
        # Acknowledge without storing: nothing in the database depends on it.
        metrics.WEBHOOK_DELIVERIES.labels("ignored").inc()
        return WebhookAck(received=True, outcome="ignored")
    typed = _typed_event(payload)
    with (
        metrics.WEBHOOK_DELIVERIES_IN_PROGRESS.track_inprogress(),
        state.signals.webhook_in_flight(),
    ):
        outcome = await anyio.to_thread.run_sync(
            apply_one_event, state, typed, limiter=state.webhook_writers
        )
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    log.info(
        "webhook",
        extra={"stripe_event_id": typed.id, "stripe_event_type": typed.type, "outcome": outcome},
    )
    return WebhookAck(received=True, outcome=outcome)


def apply_one_event(state: State, event: Event) -> str:
    """Apply one delivered event in its own transaction; its outcome (applied, stale,
    duplicate, unmatched, failed)."""
    state.signals.webhook_delivered()  # verified: webhooks work (the reconciler's cadence)
    applier = Applier(state.session_factory, state.gateway, source="webhook", read_features=True)
    return applier.apply([event]).by_event.get(event.id, "applied")


def _verify_signature(payload: bytes, header: str | None, secrets: list[str]) -> None:
    if not header:
        _reject("bad_signature", "missing Stripe-Signature header")
    try:
        verify_webhook(payload, header, secrets)
    except (SignatureError, ValueError) as error:
        _reject("bad_signature", f"invalid Stripe-Signature: {error}")


def _parse_event(payload: bytes) -> dict[str, Any]:
    try:
        event: Any = parse_json(payload)
    except json.JSONDecodeError as error:
        _reject("bad_payload", f"the payload is not JSON: {error}")
    if not _is_event(event):
        _reject("bad_payload", "the payload is not a Stripe event")
    return dict(event)


async def _check_created(event: dict[str, Any], state: State) -> None:
    """`created` is a time between 2010 and a little ahead of now: by this machine's clock,
    or, for an event further ahead, by the service's clock (under `dev` the emulator's, which
    its test clock advances: read on a worker thread, it may block)."""
    ahead = state.settings.webhook_event_max_ahead_seconds
    created = event["created"]
    latest = int(time.time()) + ahead
    if latest < created <= MAX_CREATED:
        now = await anyio.to_thread.run_sync(state.clock)
        latest = max(latest, int(now.timestamp()) + ahead)
    if not MIN_CREATED <= created <= latest:
        _reject(
            "bad_payload",
            f"the event's created ({created}) is not a time between 2010 and {ahead} s from now",
        )


def _is_event(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("object") == "event"
        and isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and type(event.get("created")) is int  # not a bool, not 1.0
        and isinstance(event.get("data"), dict)
        and isinstance(event["data"].get("object"), dict)
    )


def _typed_event(payload: bytes) -> Event:
    try:
        typed = Event.from_json(payload)
    except EventShapeError as error:
        _reject("bad_payload", f"the event does not fit Stripe's schema: {error}")
    if group_events([typed])[0].kind == "malformed":  # refused here, not parked for retries
        _reject("bad_payload", "the event's object does not fit Stripe's schema")
    return typed


def _reject(outcome: str, detail: str) -> NoReturn:
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    log.warning("webhook rejected", extra={"outcome": outcome, "reason": detail})
    raise HTTPException(400, detail=detail)
