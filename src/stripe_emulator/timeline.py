"""The passing of time: what Stripe does on its own as the emulator's clock moves forward.

`advance(store, seconds)` moves the clock, then applies, in time order and each stamped with
the moment it happened: subscription period renewals (trials ending into `active`),
scheduled cancellations (`cancel_at` / `cancel_at_period_end`, emitting
`customer.subscription.deleted`), `incomplete` subscriptions expiring after 23 hours, open
Checkout sessions expiring (`checkout.session.expired`), and the billing cycle (invoices.py):
each renewal's draft invoice, finalized and charged an hour later, and the retries of failed
payments.
"""

from __future__ import annotations

import heapq

from stripe_emulator import invoices
from stripe_emulator.sessions import expire_checkout_session
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import next_transition, transition

_SUBSCRIPTION, _CHECKOUT, _INVOICE = 0, 1, 2


def advance(store: Store, seconds: int) -> int:
    """Call with `store.lock` held; returns the new time. Objects on a test clock stay put."""
    store.clock.advance(seconds)
    now = store.now()
    catch_up(store, now, None)
    return now


def catch_up(store: Store, now: int, test_clock: str | None) -> None:
    """Apply, in time order, what happens up to `now` to the objects of `test_clock` (None:
    the objects on no test clock, which follow the emulator's own clock)."""
    queue: list[tuple[int, int, str]] = []
    for sub in store.subscriptions.rows.values():
        due = next_transition(sub, now)
        if due is not None and sub.test_clock == test_clock:
            queue.append((due, _SUBSCRIPTION, sub.id))
    for session in store.checkout_sessions.rows.values():
        if test_clock is None and session.status == "open" and session.expires_at <= now:
            queue.append((session.expires_at, _CHECKOUT, session.id))
    queued_invoices: set[str] = set()
    for invoice in store.invoices.rows.values():
        invoice_due = invoices.due(invoice, now)
        if invoice_due is not None and invoice.test_clock == test_clock:
            queued_invoices.add(invoice.id)
            queue.append((invoice_due, _INVOICE, invoice.id))
    heapq.heapify(queue)
    while queue:
        due, kind, object_id = heapq.heappop(queue)
        # A test clock's objects keep their own time (their events are stamped no later
        # than the real clock by `Store.emit`).
        at = due if test_clock is not None else max(due, store.events.last_created)
        if kind == _CHECKOUT:
            expire_checkout_session(store, object_id, created=at)
            continue
        if kind == _INVOICE:
            if invoices.due(store.invoices.rows[object_id], now) != due:
                continue  # paid, voided or retried since it was queued
            invoices.collect(store, store.invoices.rows[object_id], at)
            following = invoices.due(store.invoices.rows[object_id], now)
            if following is not None:  # a draft finalized and declined: its first retry
                heapq.heappush(queue, (following, _INVOICE, object_id))
            continue
        sub = store.subscriptions.rows[object_id]
        current = next_transition(sub, now)
        if current != due:  # ended (a last retry canceled it) or moved since it was queued
            if current is not None:
                heapq.heappush(queue, (current, _SUBSCRIPTION, object_id))
            continue
        if invoices.renews(store, sub, at):
            invoices.renew(store, sub, at)
        else:
            transition(store, sub, at)
            if sub.status == "incomplete":  # expired unpaid
                invoices.void_first_invoice(store, sub, at)
            if sub.cancel_at is not None and sub.cancel_at <= at:  # a scheduled cancellation
                invoices.bill_final_usage(store, sub, "subscription_cycle", at)
        following = next_transition(store.subscriptions.rows[object_id], now)
        if following is not None:
            heapq.heappush(queue, (following, _SUBSCRIPTION, object_id))
        # A renewal's draft is finalized and charged an hour later.
        latest = store.subscriptions.rows[object_id].latest_invoice
        if latest is not None and latest not in queued_invoices:
            invoice_due = invoices.due(store.invoices.rows[latest], now)
            if invoice_due is not None:
                queued_invoices.add(latest)
                heapq.heappush(queue, (invoice_due, _INVOICE, latest))
