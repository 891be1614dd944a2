"""`POST /v1/subscriptions/{id}/resume`: a paused subscription resumes
(https://docs.stripe.com/api/subscriptions/resume).

- `billing_cycle_anchor=now` (the default): the anchor resets to now and a new period starts,
  invoiced at once with no prorations; the subscription is `active` if the invoice is paid,
  `past_due` if its payment fails.
- `billing_cycle_anchor=unchanged`: the subscription moves to the period that surrounds now,
  its anchor kept; `proration_behavior` decides the remaining time of that period: charged on
  the next invoice (`create_prorations`, the default), invoiced at once (`always_invoice`), or
  not at all (`none`).
"""

from __future__ import annotations

from stripe_emulator import ids
from stripe_emulator.invoices import bill_now
from stripe_emulator.periods import period_end
from stripe_emulator.prorations import add_pending, remaining_time
from stripe_emulator.records import Subscription, evolve
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import restart_period, save

ANCHORS = ("now", "unchanged")


def resume(store: Store, sub: Subscription, anchor: str, behavior: str) -> Subscription:
    now = store.customer_now(sub.customer)
    if anchor == "now":
        saved = save(store, sub, evolve(restart_period(sub, now), status="active"))
        bill_now(store, saved, now)
        return store.subscriptions.get(sub.id)
    start, end = sub.current_period_start, sub.current_period_end
    while end <= now:
        start, end = end, period_end(sub.billing_cycle_anchor, end, sub.items)
    new = evolve(sub, status="active", current_period_start=start, current_period_end=end)
    lines = remaining_time(new, now) if behavior != "none" else []
    invoice_now = bool(lines) and behavior == "always_invoice"
    if invoice_now:
        new = evolve(new, latest_invoice=ids.new_id("in", now))
    saved = save(store, sub, new)
    add_pending(store, sub.id, lines)
    if invoice_now:
        bill_now(store, saved, now, items=False)
    return store.subscriptions.get(sub.id)
