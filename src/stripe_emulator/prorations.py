"""Prorations: what Stripe bills when a subscription's price or quantity changes mid-period
(https://docs.stripe.com/billing/subscriptions/prorations).

A change to a licensed (per-seat) item of an `active` or `past_due` subscription makes two
proration invoice items over the rest of the period, [now, `current_period_end`): a credit for
the unused time on the old price and quantity, and a charge for the remaining time on the new
ones; each is the item's full-period amount times the share of the period left, to the second
(Stripe's standard proration). A removed item gets the credit alone, an added one the charge
alone. Metered items bill their usage in arrears and are not prorated, nor is a trial (its
items are free). `proration_behavior` (`POST /v1/subscriptions/{id}`):

- `create_prorations` (the default, and the portal's): the items stay pending and are billed
  on the subscription's next invoice (its renewal, or an invoice made at once);
- `always_invoice`: they are invoiced at once (`billing_reason=subscription_update`), the
  invoice finalized and charged (`invoices.bill_now`);
- `none`: nothing.

A change of interval (monthly to yearly) starts a new period billed at once: the old items'
unused time is credited on that invoice. A subscription canceled at once removes its pending
prorations unless `invoice_now` bills them or `prorate` keeps them (immediate_cancel.py).
"""

from __future__ import annotations

from decimal import Decimal

from stripe_emulator import ids
from stripe_emulator.billing_records import InvoiceLine
from stripe_emulator.records import Item, Subscription
from stripe_emulator.store import Store

PRORATING_STATUSES = ("active", "past_due")


def _share(sub: Subscription, at: int) -> Decimal:
    """The part of the current period left at `at`, to the second."""
    start, end = sub.current_period_start, sub.current_period_end
    return Decimal(end - at) / Decimal(end - start)


def _line(item: Item, share: Decimal, at: int, end: int) -> InvoiceLine:
    line_id = ids.new_id("il", at)
    invoice_item = ids.new_id("ii", at)
    return InvoiceLine(
        line_id, item.price, item.quantity, at, end, item.id, None, share, invoice_item
    )


def prorations(
    old: Subscription, new_items: tuple[Item, ...], at: int, behavior: str, credit_only: bool
) -> list[InvoiceLine]:
    """The proration items of changing `old`'s items to `new_items` at `at` (`credit_only`: the
    period ends now, as a new interval starts: the old items' unused time alone)."""
    if behavior == "none" or old.status not in PRORATING_STATUSES:
        return []
    end = old.current_period_end
    if not old.current_period_start <= at < end:
        return []
    share = _share(old, at)
    before = {item.id: item for item in old.items if item.price.meter is None}
    after = {item.id: item for item in new_items if item.price.meter is None}

    def same(item: Item, other: Item | None) -> bool:
        return other is not None and (other.price.id, other.quantity) == (
            item.price.id,
            item.quantity,
        )

    lines = []
    for item_id, item in before.items():
        if credit_only or not same(item, after.get(item_id)):
            lines.append(_line(item, -share, at, end))
            if not credit_only and item_id in after:
                lines.append(_line(after[item_id], share, at, end))
    if not credit_only:
        lines.extend(_line(item, share, at, end) for i, item in after.items() if i not in before)
    return lines


def remaining_time(sub: Subscription, at: int) -> list[InvoiceLine]:
    """The charges for the rest of the current period of the subscription's licensed items
    (a paused subscription resumed within a period it keeps: `resumption.py`)."""
    end = sub.current_period_end
    share = _share(sub, at)
    return [_line(item, share, at, end) for item in sub.items if item.price.meter is None]


def add_pending(store: Store, sub_id: str, lines: list[InvoiceLine]) -> None:
    if lines:
        store.pending_prorations.setdefault(sub_id, []).extend(lines)


def take_pending(store: Store, sub_id: str) -> tuple[InvoiceLine, ...]:
    """The subscription's pending proration items, now invoiced (so no longer pending)."""
    return tuple(store.pending_prorations.pop(sub_id, ()))


def has_pending(store: Store, sub_id: str) -> bool:
    return bool(store.pending_prorations.get(sub_id))


def drop_pending(store: Store, sub_id: str) -> None:
    store.pending_prorations.pop(sub_id, None)
