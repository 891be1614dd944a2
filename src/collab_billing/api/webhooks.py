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

from fastapi import APIRouter, Header, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import Engine

from collab_billing import metrics
from collab_billing.api.delivery_groups import ApplyGroup, DeliveryGroups
from collab_billing.api.schemas import ErrorResponse
from collab_billing.db.engine import is_sqlite
from collab_billing.reconcile.events import RELEVANT_TYPES
from collab_billing.reconcile.run import TimedApplier
from collab_billing.stripe_gateway import SignatureError, verify_webhook
from collab_billing.stripe_objects import DecodeError, Event

router = APIRouter(tags=["webhooks"])
# Groups of deliveries applied at once per process (see `delivery_groups`). SQLite has one
# writer at a time: two writers, so that one group's Python work overlaps the other's
# transaction. PostgreSQL writers of different objects run in parallel: a few keep the
# database busy while one of them runs Python. More only contend for the GIL: with anyio's
# default pool (40 threads) a burst ran every delivery at once, each at a fraction of the
# speed, so all of them were late instead of the last few (measured: the same throughput, a
# longer tail).
WRITERS_SQLITE = 2
WRITERS_POSTGRES = 4
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
    try:
        typed = Event.from_json(payload)
        typed.object  # noqa: B018 (decoded now, so that a malformed object is refused here)
    except DecodeError as error:
        _reject("bad_payload", f"the event does not fit Stripe's schema: {error}")
    with metrics.WEBHOOK_DELIVERIES_IN_PROGRESS.track_inprogress():
        outcome = await _delivery_groups(request).deliver(typed)
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


def _delivery_groups(request: Request) -> DeliveryGroups:
    """This process's writers of deliveries (made on first use: they belong to the running
    event loop)."""
    state = request.app.state
    groups: DeliveryGroups | None = getattr(state, "delivery_groups", None)
    if groups is None:
        engine: Engine = state.engine
        writers = WRITERS_SQLITE if is_sqlite(engine) else WRITERS_POSTGRES
        groups = state.delivery_groups = DeliveryGroups(_group_applier(state), writers)
    return groups


def _group_applier(state: Any) -> ApplyGroup:
    def apply_group(events: list[Event]) -> dict[str, str]:
        # One applier per group: its per-batch read cache must not be shared between threads.
        applier = TimedApplier(
            state.session_factory, state.gateway, source="webhook", outcomes_by_event=True
        )
        stats = applier.apply(events)
        state.wal_checkpoints.batch_committed()
        metrics.record_outcomes(stats.outcomes)
        return stats.by_event or {}

    return apply_group


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
