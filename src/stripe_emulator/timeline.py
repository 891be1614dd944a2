"""The passing of time: what Stripe does on its own as the emulator's clock moves forward.

`advance(store, seconds)` moves the clock, then applies, in time order and each stamped with
the moment it happened: subscription period renewals (trials ending into `active`),
scheduled cancellations (`cancel_at` / `cancel_at_period_end`, emitting
`customer.subscription.deleted`), `incomplete` subscriptions expiring after 23 hours, and open
Checkout sessions expiring (`checkout.session.expired`).
"""

from __future__ import annotations

import heapq

from stripe_emulator.sessions import expire_checkout_session
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import next_transition, transition

_SUBSCRIPTION, _CHECKOUT = 0, 1


def advance(store: Store, seconds: int) -> int:
    """Call with `store.lock` held; returns the new time."""
    store.clock.advance(seconds)
    now = store.now()
    queue: list[tuple[int, int, str]] = []
    for sub in store.subscriptions.rows.values():
        due = next_transition(sub, now)
        if due is not None:
            queue.append((due, _SUBSCRIPTION, sub.id))
    for session in store.checkout_sessions.rows.values():
        if session.status == "open" and session.expires_at <= now:
            queue.append((session.expires_at, _CHECKOUT, session.id))
    heapq.heapify(queue)
    while queue:
        due, kind, object_id = heapq.heappop(queue)
        at = max(due, store.events.last_created)
        if kind == _CHECKOUT:
            expire_checkout_session(store, object_id, created=at)
            continue
        transition(store, store.subscriptions.rows[object_id], at)
        following = next_transition(store.subscriptions.rows[object_id], now)
        if following is not None:
            heapq.heappush(queue, (following, _SUBSCRIPTION, object_id))
    return now
