"""The one package that talks to Stripe: `StripeGateway` (through the official SDK's
`StripeClient`, and a direct path for the reconciler's reads) and webhook signatures."""

from collab_billing.stripe_gateway.errors import StripeGatewayError, StripeNotConfigured
from collab_billing.stripe_gateway.gateway import (
    STRIPE_API_VERSION,
    EventPage,
    RequestObserver,
    StripeGateway,
    StripeObjectDict,
    gateway_or_none,
)
from collab_billing.stripe_gateway.webhooks import SignatureError, verify_webhook

__all__ = [
    "STRIPE_API_VERSION",
    "EventPage",
    "RequestObserver",
    "SignatureError",
    "StripeGateway",
    "StripeGatewayError",
    "StripeNotConfigured",
    "StripeObjectDict",
    "gateway_or_none",
    "verify_webhook",
]
