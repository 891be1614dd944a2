"""`/v1/test_helpers/test_clocks` (see test_clocks.py)."""

from __future__ import annotations

from stripe_emulator import test_clocks
from stripe_emulator.api import Call, list_args, list_table, route
from stripe_emulator.billing_records import TestClock
from stripe_emulator.invoice_objects import test_clock as render
from stripe_emulator.objects import Json


@route("POST", "/v1/test_helpers/test_clocks")
def create(call: Call) -> Json:
    p = call.params
    frozen_time = p.integer("frozen_time", required=True)
    name = p.string("name", max_length=300)
    p.finish()
    assert frozen_time is not None
    return render(test_clocks.create_clock(call.store, frozen_time, name))


@route("GET", "/v1/test_helpers/test_clocks/{id}")
def retrieve(call: Call) -> Json:
    call.params.finish()
    return render(test_clocks.live_clock(call.store, call.id))


@route("POST", "/v1/test_helpers/test_clocks/{id}/advance")
def advance(call: Call) -> Json:
    p = call.params
    frozen_time = p.integer("frozen_time", required=True)
    p.finish()
    assert frozen_time is not None
    return render(test_clocks.advance_clock(call.store, call.id, frozen_time))


@route("DELETE", "/v1/test_helpers/test_clocks/{id}")
def delete(call: Call) -> Json:
    call.params.finish()
    clock = test_clocks.delete_clock(call.store, call.id)
    return {"id": clock.id, "object": "test_helpers.test_clock", "deleted": True}


@route("GET", "/v1/test_helpers/test_clocks")
def list_clocks(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    p.finish()

    def keep(record: TestClock) -> bool:
        return not record.deleted

    url = "/v1/test_helpers/test_clocks"
    return list_table(call.store.test_clocks, args, url, render, keep)
