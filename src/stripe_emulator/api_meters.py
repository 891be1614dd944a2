"""`/v1/billing/meters`, `/v1/billing/meter_events`, `.../event_summaries` (see meters.py)."""

from __future__ import annotations

from typing import Any

from stripe_emulator import meters
from stripe_emulator.api import Call, list_args, list_table, route
from stripe_emulator.errors import invalid, missing
from stripe_emulator.meters import FORMULAS
from stripe_emulator.objects import Json, list_object


@route("POST", "/v1/billing/meters")
def create_meter(call: Call) -> Json:
    p = call.params
    fields: dict[str, Any] = {
        "display_name": p.string("display_name", required=True, max_length=250),
        "event_name": p.string("event_name", required=True, max_length=100),
        "event_time_window": p.string("event_time_window", choices=("day", "hour")),
    }
    aggregation = p.hash("default_aggregation", required=True)
    assert aggregation is not None
    fields["formula"] = aggregation.string("formula", required=True, choices=FORMULAS)
    mapping = p.hash("customer_mapping")
    if mapping is not None:
        mapping.string("type", required=True, choices=("by_id",))
        fields["customer_key"] = mapping.string("event_payload_key", required=True, max_length=100)
    value_settings = p.hash("value_settings")
    if value_settings is not None:
        fields["value_key"] = value_settings.string(
            "event_payload_key", required=True, max_length=100
        )
    p.finish()
    return meters.render(meters.create_meter(call.store, **fields))


@route("GET", "/v1/billing/meters/{id}")
def retrieve_meter(call: Call) -> Json:
    call.params.finish()
    return meters.render(call.store.meters.meters.get(call.id))


@route("POST", "/v1/billing/meters/{id}")
def update_meter(call: Call) -> Json:
    display_name = call.params.string("display_name", max_length=250)
    call.params.finish()
    return meters.render(meters.update_meter(call.store, call.id, display_name))


@route("POST", "/v1/billing/meters/{id}/deactivate")
def deactivate_meter(call: Call) -> Json:
    call.params.finish()
    return meters.render(meters.set_status(call.store, call.id, active=False))


@route("POST", "/v1/billing/meters/{id}/reactivate")
def reactivate_meter(call: Call) -> Json:
    call.params.finish()
    return meters.render(meters.set_status(call.store, call.id, active=True))


@route("GET", "/v1/billing/meters")
def list_meters(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    status = p.string("status", choices=("active", "inactive"))
    p.finish()

    def keep(meter: Any) -> bool:
        return status is None or meter.status == status

    return list_table(call.store.meters.meters, args, "/v1/billing/meters", meters.render, keep)


def _payload(call: Call) -> dict[str, str]:
    raw = call.params.raw("payload")
    if raw is None:
        raise missing("payload")
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise invalid("payload", "Invalid object: payload must be a hash of strings")
    return raw


@route("POST", "/v1/billing/meter_events")
def create_meter_event(call: Call) -> Json:
    p = call.params
    event_name = p.string("event_name", required=True, max_length=100) or ""
    identifier = p.string("identifier", max_length=100)
    timestamp = p.integer("timestamp")
    payload = _payload(call)
    p.finish()
    event = meters.record_event(call.store, event_name, payload, identifier, timestamp)
    return meters.render_event(event)


@route("GET", "/v1/billing/meters/{id}/event_summaries")
def event_summaries(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    customer = p.string("customer", required=True) or ""
    start = p.integer("start_time", required=True)
    end = p.integer("end_time", required=True)
    grouping = p.string("value_grouping_window", choices=("day", "hour"))
    p.finish()
    assert start is not None and end is not None
    found = meters.summaries(call.store, call.id, customer, start, end, grouping)
    if args.starting_after is not None:
        ids_ = [item["id"] for item in found]
        position = ids_.index(args.starting_after) + 1 if args.starting_after in ids_ else 0
        found = found[position:]
    page = found[: args.limit]
    url = f"/v1/billing/meters/{call.id}/event_summaries"
    return list_object(page, len(found) > len(page), url)
