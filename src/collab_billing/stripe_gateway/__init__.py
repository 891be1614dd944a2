"""The one package that talks to Stripe: `StripeGateway` (the official SDK's `StripeClient`,
throttled), typed event pages, and webhook signatures."""

from collab_billing.stripe_gateway.client import PAGE_EVENTS, StripeGateway, gateway_or_none
from collab_billing.stripe_gateway.errors import DuplicateMeterEvent, StripeGatewayError
from collab_billing.stripe_gateway.events import Event, EventShapeError
from collab_billing.stripe_gateway.signatures import SignatureError, verify_webhook

__all__ = [
    "PAGE_EVENTS",
    "DuplicateMeterEvent",
    "Event",
    "EventShapeError",
    "SignatureError",
    "StripeGateway",
    "StripeGatewayError",
    "gateway_or_none",
    "verify_webhook",
]
