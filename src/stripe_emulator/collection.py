"""Automatic collection stops when a subscription is canceled.

"By default, upon subscription cancellation, Stripe stops automatic collection of all finalized
invoices" (https://docs.stripe.com/api/subscriptions/cancel), and it finalizes a draft only
while the draft's `auto_advance` is true, an hour after it is created
(https://docs.stripe.com/invoicing/integration/automatic-advancement-collection). So once
its subscription is canceled, a renewal's draft is no longer finalized nor charged, and an
open invoice is no longer retried: each gets `auto_advance=false` (`invoice.updated`). They
can still be finalized, paid or voided by hand.
"""

from __future__ import annotations

from stripe_emulator.diff import previous_attributes
from stripe_emulator.invoice_objects import invoice as render_invoice
from stripe_emulator.records import evolve
from stripe_emulator.store import Store


def stop_collection(store: Store, sub_id: str, at: int) -> None:
    for invoice_id in store.invoice_index.get(sub_id, ()):
        invoice = store.invoices.rows[invoice_id]
        if invoice.status not in ("draft", "open") or not invoice.auto_advance:
            continue
        stopped = evolve(
            invoice, auto_advance=False, automatically_finalizes_at=None, next_payment_attempt=None
        )
        store.invoices.put(stopped.id, stopped)
        previous = previous_attributes(render_invoice(invoice), render_invoice(stopped))
        store.emit("invoice.updated", stopped, previous, created=at)
