"""The billing domain: what the billing routes do, as typed steps from a request to Stripe and
to rows. No HTTP types here; errors carry the status they map to.

Stripe calls never run inside a database transaction: a slow Stripe must not hold locks.
"""

from collab_billing.billing import spend, usage
from collab_billing.billing.access import (
    find_user,
    is_active,
    is_cancelable,
    list_sellable_prices,
    list_user_subscriptions,
)
from collab_billing.billing.checkout import ensure_customer, start_checkout
from collab_billing.billing.errors import BillingError, Conflict, NotFound
from collab_billing.billing.manage import open_cancel_portal

__all__ = [
    "BillingError",
    "Conflict",
    "NotFound",
    "ensure_customer",
    "find_user",
    "is_active",
    "is_cancelable",
    "list_sellable_prices",
    "list_user_subscriptions",
    "open_cancel_portal",
    "spend",
    "start_checkout",
    "usage",
]
