"""A subscription canceled at once, by `DELETE /v1/subscriptions/{id}` or in the portal, and
what becomes of its pending prorations.

Stripe: "If you've set the subscription to cancel at the end of the period, any pending
prorations are also left in place and collected at the end of the period. But if the
subscription is set to cancel immediately, pending prorations are removed if `invoice_now` and
`prorate` are both set to false" (the cancel operation's description in the OpenAPI spec, and
docs.stripe.com/api/subscriptions/cancel). `prorate` "will generate a proration invoice item
that credits remaining unused time until the subscription period end"; `invoice_now` "will
generate a final invoice that invoices for any un-invoiced metered usage and new/pending
proration invoice items". Both default to false.

The portal's immediate cancel is the default configuration's: no prorations
(`features.subscription_cancel.proration_behavior=none`) and no final invoice, so its pending
prorations are removed as the API's are.
"""

from __future__ import annotations

from stripe_emulator.invoices import bill_final_usage
from stripe_emulator.prorations import add_pending, drop_pending, prorations
from stripe_emulator.records import Subscription
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import cancel_subscription


def cancel_now(
    store: Store,
    sub_id: str,
    *,
    invoice_now: bool = False,
    prorate: bool = False,
    comment: str | None = None,
    feedback: str | None = None,
) -> Subscription:
    """Cancel the subscription now; its pending prorations are billed (`invoice_now`), kept
    with a credit for the unused time (`prorate`), or else removed."""
    before = store.subscriptions.get(sub_id)
    record = cancel_subscription(store, sub_id, comment=comment, feedback=feedback)
    assert record.ended_at is not None
    if prorate:  # the unused time of the licensed items, credited
        credit = prorations(before, (), record.ended_at, "create_prorations", credit_only=True)
        add_pending(store, sub_id, credit)
    if invoice_now:  # un-invoiced metered usage and pending prorations, billed now
        bill_final_usage(store, before, "subscription_update", record.ended_at)
    elif not prorate:
        drop_pending(store, sub_id)
    return record
