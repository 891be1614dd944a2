"""The billing domain: what the billing routes do, as typed steps from a request to Stripe and
to rows. No HTTP types here; errors carry the status they map to.

Stripe calls never run inside a database transaction: a slow Stripe must not hold locks.
"""

from collab_billing.billing import usage
from collab_billing.billing.access import (
    Access,
    BillingView,
    billing_view,
    decide_access,
    find_user,
    is_active,
    is_cancelable,
    list_sellable_prices,
    list_user_invoices,
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
    ManageResult,
    invoice_to_pay,
    manage_subscription,
    open_cancel_portal,
)
from collab_billing.billing.targets import ManageRequest
from collab_billing.state import spend

__all__ = [
    "INTENTS",
    "Access",
    "BillingError",
    "BillingView",
    "CheckoutRequest",
    "CheckoutStarted",
    "Conflict",
    "ManageRequest",
    "ManageResult",
    "NotFound",
    "billing_view",
    "decide_access",
    "ensure_customer",
    "find_user",
    "invoice_to_pay",
    "is_active",
    "is_cancelable",
    "list_sellable_prices",
    "list_user_invoices",
    "list_user_subscriptions",
    "manage_subscription",
    "open_cancel_portal",
    "spend",
    "start_checkout",
    "subscription_kind",
    "usage",
]
