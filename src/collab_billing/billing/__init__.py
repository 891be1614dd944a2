"""The billing domain: what the billing routes do, as typed steps from a request to Stripe and
to rows. No HTTP types here; errors carry the status they map to.

Stripe calls never run inside a database transaction: a slow Stripe must not hold locks.
"""

from collab_billing.billing.access import (
    find_user,
    is_active,
    is_cancelable,
    list_sellable_prices,
    list_user_subscriptions,
    subscription_kind,
)
from collab_billing.billing.checkout import (
    CheckoutRequest,
    CheckoutStarted,
    ensure_customer,
    start_checkout,
)
from collab_billing.billing.errors import BillingError, Conflict, NotFound
from collab_billing.billing.manage import (
    INTENTS,
    ManageRequest,
    ManageResult,
    manage_subscription,
    open_cancel_portal,
)

__all__ = [
    "INTENTS",
    "BillingError",
    "CheckoutRequest",
    "CheckoutStarted",
    "Conflict",
    "ManageRequest",
    "ManageResult",
    "NotFound",
    "ensure_customer",
    "find_user",
    "is_active",
    "is_cancelable",
    "list_sellable_prices",
    "list_user_subscriptions",
    "manage_subscription",
    "open_cancel_portal",
    "start_checkout",
    "subscription_kind",
]
