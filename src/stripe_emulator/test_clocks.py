"""Test clocks (`/v1/test_helpers/test_clocks`): a customer created with `test_clock` lives
on that clock's time, and so do its subscriptions and invoices. Advancing a clock moves only
its own objects (renewals, invoices, payment retries, scheduled cancellations); the
emulator's own clock (`/_emulator/clock/advance`) moves only the objects on no test clock.

Advancing answers the clock with status `advancing` (and emits
`test_helpers.test_clock.advancing`); the work is done before the next request can see the
clock, which is then `ready` (`test_helpers.test_clock.ready`), as Stripe's clocks become
ready once their objects have caught up. Deleting a clock deletes its customers (which
cancels their subscriptions) and emits `test_helpers.test_clock.deleted`.
"""

from __future__ import annotations

from stripe_emulator import ids
from stripe_emulator.billing_records import TestClock
from stripe_emulator.catalog import delete_customer
from stripe_emulator.errors import bad_request, not_found
from stripe_emulator.records import DAY, evolve
from stripe_emulator.store import Store
from stripe_emulator.timeline import catch_up

MAX_ADVANCE = 2 * 366 * DAY  # Stripe: at most two intervals of the longest price ahead


def create_clock(store: Store, frozen_time: int, name: str | None) -> TestClock:
    record = TestClock(ids.new_id("clock"), store.now(), frozen_time, name or None)
    store.test_clocks.add(record.id, record)
    store.emit("test_helpers.test_clock.created", record)
    return record


def advance_clock(store: Store, clock_id: str, frozen_time: int) -> TestClock:
    """Move the clock to `frozen_time`; returns the clock as the API answers it (advancing)."""
    clock = live_clock(store, clock_id)
    if frozen_time <= clock.frozen_time:
        raise bad_request(
            "The frozen time must be after the test clock's current frozen time "
            f"({clock.frozen_time}).",
            "frozen_time",
        )
    if frozen_time - clock.frozen_time > MAX_ADVANCE:
        raise bad_request(
            "You can only advance a test clock up to two years at a time.", "frozen_time"
        )
    advancing = evolve(clock, status="advancing")
    store.test_clocks.put(clock_id, advancing)
    store.emit("test_helpers.test_clock.advancing", advancing)
    moved = evolve(advancing, frozen_time=frozen_time)
    store.test_clocks.put(clock_id, moved)
    catch_up(store, frozen_time, clock_id)
    ready = evolve(moved, status="ready")
    store.test_clocks.put(clock_id, ready)
    store.emit("test_helpers.test_clock.ready", ready)
    return evolve(advancing, frozen_time=frozen_time)


def delete_clock(store: Store, clock_id: str) -> TestClock:
    clock = live_clock(store, clock_id)
    for customer in list(store.customers.rows.values()):
        if customer.test_clock == clock_id and not customer.deleted:
            delete_customer(store, customer.id)
    store.test_clocks.put(clock_id, evolve(clock, deleted=True))
    store.emit("test_helpers.test_clock.deleted", clock)
    return clock


def live_clock(store: Store, clock_id: str, param: str = "id") -> TestClock:
    clock = store.test_clocks.get(clock_id, param)
    if clock.deleted:
        raise not_found("test_helpers.test_clock", clock_id, param)
    return clock
