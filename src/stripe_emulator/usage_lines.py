"""Invoice lines of subscription items: licensed items in advance, metered items in arrears.

Stripe bills a licensed item (`recurring.usage_type=licensed`) for the period that starts, at
price x quantity. A metered item (`usage_type=metered`, `recurring.meter`) has no quantity: at
each renewal its line bills the period that ends, at the meter's aggregated value (sum, count
or last, per its `default_aggregation`) of the customer's meter events with a timestamp in that
period, times the price's `unit_amount_decimal`, rounded to the nearest cent of the line total.
A subscription's first invoice carries its metered items at quantity 0 (nothing used yet), and
usage during a trial is not billed. A renewal's invoice stays a draft for an hour (Stripe's
finalization grace period): meter events for the ended period that arrive by then are billed,
its metered lines being re-read as it is finalized (`refreshed`); later ones are not.
"""

from __future__ import annotations

from decimal import Decimal

from stripe_emulator import ids
from stripe_emulator.billing_records import InvoiceLine
from stripe_emulator.meters import aggregate_exact
from stripe_emulator.records import Item, evolve
from stripe_emulator.store import Store


def usage(store: Store, meter_id: str, customer: str, period: tuple[int, int]) -> Decimal:
    """The meter's aggregated value for `customer` over [start, end) (0 without events)."""
    meter = store.meters.meters.rows.get(meter_id)
    if meter is None:
        return Decimal(0)
    events = store.meters.events.get((meter_id, customer), [])
    return aggregate_exact(meter, events, *period)


def item_line(
    store: Store,
    item: Item,
    customer: str,
    period: tuple[int, int],
    usage_period: tuple[int, int] | None,
    at: int,
    trial: bool,
) -> InvoiceLine:
    """The line of one item. `period`: the period that starts (licensed items);
    `usage_period`: the period that ends (metered items; None on a first invoice)."""
    line_id = ids.new_id("il", at)
    meter = item.price.meter
    if meter is None:
        quantity = 0 if trial else item.quantity
        return InvoiceLine(line_id, item.price, quantity, *period, item.id)
    if usage_period is None or trial:
        return InvoiceLine(line_id, item.price, 0, *period, item.id, Decimal(0))
    # Stripe bills an item added within the period for the usage from then on.
    billed = (max(usage_period[0], item.created), usage_period[1])
    used = usage(store, meter, customer, billed)
    return InvoiceLine(line_id, item.price, int(used), *billed, item.id, used)


def refreshed(store: Store, line: InvoiceLine, customer: str, created: int) -> InvoiceLine:
    """A draft's line as its invoice is finalized: a metered line billing a period that ended
    by the invoice's creation is re-read, with the usage reported for it since."""
    meter = line.price.meter
    if meter is None or line.usage is None or line.period_end > created:
        return line  # licensed, or a zero line of a period that starts (a trial's end)
    used = usage(store, meter, customer, (line.period_start, line.period_end))
    return evolve(line, quantity=int(used), usage=used)
