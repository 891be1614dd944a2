"""Billing meters, meter events, event summaries and metered prices, through the official SDK.
Every response of these tests is checked against Stripe's OpenAPI schema at the end."""

from __future__ import annotations

import json

import pytest
import stripe

from tests.emulator.conftest import Control
from tests.emulator.openapi_schema import load_spec
from tests.emulator.test_contract import validate_body

MINUTE = 60


def make_meter(client: stripe.StripeClient, event_name: str = "tokens", **extra: object) -> str:
    meter = client.v1.billing.meters.create(
        params={
            "display_name": "Tokens",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            **extra,  # type: ignore[typeddict-item]
        }
    )
    return meter.id


def send(
    client: stripe.StripeClient, customer: str, value: str, identifier: str, **extra: object
) -> stripe.billing.MeterEvent:
    return client.v1.billing.meter_events.create(
        params={
            "event_name": "tokens",
            "payload": {"stripe_customer_id": customer, "value": value},
            "identifier": identifier,
            **extra,  # type: ignore[typeddict-item]
        }
    )


def total(client: stripe.StripeClient, meter: str, customer: str, start: int, end: int) -> float:
    page = client.v1.billing.meters.event_summaries.list(
        meter, params={"customer": customer, "start_time": start, "end_time": end}
    )
    return float(sum(summary.aggregated_value for summary in page.data))


def test_meter_lifecycle_and_list(client: stripe.StripeClient, ctl: Control) -> None:
    ctl.emulator.app.state.recorded.take()
    meter_id = make_meter(
        client,
        customer_mapping={"type": "by_id", "event_payload_key": "cust"},
        value_settings={"event_payload_key": "n"},
    )
    meter = client.v1.billing.meters.retrieve(meter_id)
    assert meter.event_name == "tokens" and meter.status == "active"
    assert meter.customer_mapping.event_payload_key == "cust"
    assert meter.value_settings.event_payload_key == "n"
    with pytest.raises(stripe.InvalidRequestError):
        make_meter(client)  # one active meter per event name
    inactive = client.v1.billing.meters.deactivate(meter_id)
    assert inactive.status == "inactive" and inactive.status_transitions.deactivated_at
    assert [m.id for m in client.v1.billing.meters.list(params={"status": "inactive"}).data] == [
        meter_id
    ]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(
            params={"event_name": "tokens", "payload": {"cust": "cus_1", "n": "1"}}
        )
    assert client.v1.billing.meters.reactivate(meter_id).status == "active"
    renamed = client.v1.billing.meters.update(meter_id, params={"display_name": "T"})
    assert renamed.display_name == "T"
    event = client.v1.billing.meter_events.create(
        params={"event_name": "tokens", "payload": {"cust": "cus_1", "n": "2.5"}}
    )
    assert event.payload["n"] == "2.5" and event.identifier
    with pytest.raises(stripe.InvalidRequestError):  # the value key is the meter's, not `value`
        client.v1.billing.meter_events.create(
            params={"event_name": "tokens", "payload": {"stripe_customer_id": "c", "value": "1"}}
        )
    state = ctl("GET", "state?events=true")
    assert [m["id"] for m in state["meters"]] == [meter_id]
    kinds = [event["type"] for event in state["events"]]
    assert kinds == [
        "billing.meter.created",
        "billing.meter.deactivated",
        "billing.meter.reactivated",
        "billing.meter.updated",
    ]
    spec = load_spec()
    for event in state["events"]:
        assert spec.errors(spec.object_validator("event"), event) == []
        assert spec.errors(spec.object_validator("billing.meter"), event["data"]["object"]) == []
    assert state["events"][1]["data"]["previous_attributes"]["status"] == "active"
    _check_recorded_against_spec(ctl)


def test_identifier_unique_for_24_hours_and_timestamp_window(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl.emulator.app.state.recorded.take()
    meter = make_meter(client)
    now = ctl("GET", "clock")["now"]
    start = now - now % MINUTE - 36 * 86400
    send(client, "cus_a", "3", "rec-1")
    with pytest.raises(stripe.InvalidRequestError) as repeat:
        send(client, "cus_a", "3", "rec-1")
    assert "already exists with identifier" in str(repeat.value.user_message)
    with pytest.raises(stripe.InvalidRequestError):
        send(client, "cus_a", "1", "old", timestamp=now - 36 * 86400)
    with pytest.raises(stripe.InvalidRequestError):
        send(client, "cus_a", "1", "future", timestamp=now + 600)
    send(client, "cus_a", "2", "rec-2", timestamp=now - 86400)
    send(client, "cus_b", "7", "rec-3")
    end = now - now % MINUTE + MINUTE
    assert total(client, meter, "cus_a", start, end) == 5
    assert total(client, meter, "cus_b", start, end) == 7
    with pytest.raises(stripe.InvalidRequestError):  # not minute-aligned
        total(client, meter, "cus_a", start + 1, end)
    ctl("POST", "clock/advance", {"seconds": 86400 + 1})
    send(client, "cus_a", "3", "rec-1")  # past 24 hours the identifier may be used again
    end = ctl("GET", "clock")["now"] // MINUTE * MINUTE + MINUTE
    assert total(client, meter, "cus_a", start, end) == 8
    _check_recorded_against_spec(ctl)


def test_count_and_last_aggregations_and_daily_grouping(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl.emulator.app.state.recorded.take()
    counted = make_meter(client, "calls", default_aggregation={"formula": "count"})
    latest = make_meter(client, "seats", default_aggregation={"formula": "last"})
    now = ctl("GET", "clock")["now"]
    for n in ("4", "9", "2"):
        client.v1.billing.meter_events.create(
            params={"event_name": "calls", "payload": {"stripe_customer_id": "c", "value": n}}
        )
        client.v1.billing.meter_events.create(
            params={"event_name": "seats", "payload": {"stripe_customer_id": "c", "value": n}}
        )
    day = now - now % 86400
    assert total(client, counted, "c", day, day + 86400) == 3
    assert total(client, latest, "c", day, day + 86400) == 2
    grouped = client.v1.billing.meters.event_summaries.list(
        counted,
        params={
            "customer": "c",
            "start_time": day - 86400,
            "end_time": day + 86400,
            "value_grouping_window": "day",
        },
    )
    assert [s.aggregated_value for s in grouped.data] == [3, 0]
    _check_recorded_against_spec(ctl)


def test_metered_price_names_its_meter(client: stripe.StripeClient, ctl: Control) -> None:
    ctl.emulator.app.state.recorded.take()
    meter = make_meter(client)
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": "0.25",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
            "product_data": {"name": "Tokens"},
        }
    )
    assert price.recurring is not None and price.recurring.meter == meter
    assert price.recurring.usage_type == "metered"
    assert price.unit_amount is None and str(price.unit_amount_decimal) == "0.25"
    listed = client.v1.prices.list(params={"recurring": {"meter": meter}})
    assert [p.id for p in listed.data] == [price.id]
    with pytest.raises(stripe.InvalidRequestError):  # metered needs a meter
        client.v1.prices.create(
            params={
                "currency": "usd",
                "unit_amount": 1,
                "recurring": {"interval": "month", "usage_type": "metered"},
                "product_data": {"name": "x"},
            }
        )
    _check_recorded_against_spec(ctl)


def _check_recorded_against_spec(ctl: Control) -> None:
    spec = load_spec()
    problems = []
    for method, path, status, raw in ctl.emulator.app.state.recorded.take():
        if path.startswith("/v1"):
            problems += validate_body(spec, method, path, status, json.loads(raw))
    assert problems == []
