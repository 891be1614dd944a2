"""Billing meters and their events: the state and the rules Stripe applies.

Meter changes emit Stripe's `billing.meter.*` events (meter events emit none, as on Stripe).
A meter names an `event_name`, how its events aggregate (`sum`, `count`, `last`) and which
payload keys carry the customer and the value. Meter events are kept per (meter, customer)
in arrival order, so an event summary is one scan of that customer's events. An event's
`identifier` is unique over a rolling 24 hours: a repeat is refused (400), as Stripe does, so
a client that derives identifiers from its own records can retry safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from stripe_emulator import ids
from stripe_emulator.diff import previous_attributes
from stripe_emulator.errors import StripeError, bad_request, invalid
from stripe_emulator.objects import Json
from stripe_emulator.records import DAY, evolve
from stripe_emulator.store import Store, Table

IDENTIFIER_TTL_SECONDS = DAY
PAST_WINDOW_SECONDS = 35 * DAY
FUTURE_WINDOW_SECONDS = 5 * 60
FORMULAS = ("count", "last", "sum")


@dataclass(frozen=True, slots=True)
class Meter:
    id: str
    created: int
    updated: int
    display_name: str
    event_name: str
    formula: str = "sum"
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"
    event_time_window: str | None = None
    status: str = "active"
    deactivated_at: int | None = None


@dataclass(frozen=True, slots=True)
class MeterEvent:
    identifier: str
    created: int
    event_name: str
    timestamp: int
    payload: dict[str, str]
    value: Decimal


@dataclass
class MeterState:
    """All meters and meter events of one emulator (`store.meters`)."""

    meters: Table[Meter] = field(default_factory=lambda: Table("billing.meter"))
    # identifier -> created, for the 24-hour uniqueness window.
    identifiers: dict[str, int] = field(default_factory=dict)
    # (meter id, customer id) -> the events, in arrival order.
    events: dict[tuple[str, str], list[MeterEvent]] = field(default_factory=dict)

    def by_event_name(self, event_name: str) -> Meter | None:
        for meter in self.meters.rows.values():
            if meter.event_name == event_name and meter.status == "active":
                return meter
        return None


def render(meter: Meter) -> Json:
    return {
        "id": meter.id,
        "object": "billing.meter",
        "created": meter.created,
        "customer_mapping": {"event_payload_key": meter.customer_key, "type": "by_id"},
        "default_aggregation": {"formula": meter.formula},
        "display_name": meter.display_name,
        "event_name": meter.event_name,
        "event_time_window": meter.event_time_window,
        "livemode": False,
        "status": meter.status,
        "status_transitions": {"deactivated_at": meter.deactivated_at},
        "updated": meter.updated,
        "value_settings": {"event_payload_key": meter.value_key},
    }


def render_event(event: MeterEvent) -> Json:
    return {
        "object": "billing.meter_event",
        "created": event.created,
        "event_name": event.event_name,
        "identifier": event.identifier,
        "livemode": False,
        "payload": dict(event.payload),
        "timestamp": event.timestamp,
    }


def create_meter(store: Store, **fields: object) -> Meter:
    state = store.meters
    event_name = str(fields["event_name"])
    if state.by_event_name(event_name) is not None:
        raise invalid(
            "event_name",
            f"An active meter with event_name `{event_name}` already exists.",
            code="resource_already_exists",
        )
    now = store.now()
    meter = Meter(id=ids.new_id("mtr"), created=now, updated=now, **fields)  # type: ignore[arg-type]
    state.meters.add(meter.id, meter)
    store.emit("billing.meter.created", render(meter))
    return meter


def update_meter(store: Store, meter_id: str, display_name: str | None) -> Meter:
    old = store.meters.meters.get(meter_id)
    if display_name is None:
        return old
    new = evolve(old, display_name=display_name, updated=store.now())
    store.meters.meters.put(new.id, new)
    _emit_change(store, "billing.meter.updated", old, new)
    return new


def set_status(store: Store, meter_id: str, active: bool) -> Meter:
    old = store.meters.meters.get(meter_id)
    wanted = "active" if active else "inactive"
    if old.status == wanted:
        raise bad_request(f"The meter `{meter_id}` is already {wanted}.")
    if active and store.meters.by_event_name(old.event_name) is not None:
        raise bad_request(f"An active meter with event_name `{old.event_name}` already exists.")
    now = store.now()
    new = evolve(old, status=wanted, updated=now, deactivated_at=None if active else now)
    store.meters.meters.put(new.id, new)
    kind = "billing.meter.reactivated" if active else "billing.meter.deactivated"
    _emit_change(store, kind, old, new)
    return new


def _emit_change(store: Store, type_: str, old: Meter, new: Meter) -> None:
    """The event Stripe emits, with `previous_attributes` (a meter's JSON is its snapshot)."""
    rendered = render(new)
    previous = previous_attributes(render(old), rendered)
    if previous:
        store.emit(type_, rendered, previous)


def _decimal(text: str, key: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise invalid(f"payload[{key}]", f"The value of payload[{key}] must be a number.")
    return value


def record_event(
    store: Store,
    event_name: str,
    payload: dict[str, str],
    identifier: str | None,
    timestamp: int | None,
) -> MeterEvent:
    """Validate and record one meter event (Stripe's synchronous checks)."""
    state = store.meters
    now = store.now()
    when = now if timestamp is None else timestamp
    if when < now - PAST_WINDOW_SECONDS or when > now + FUTURE_WINDOW_SECONDS:
        raise invalid(
            "timestamp",
            "Timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
        )
    meter = state.by_event_name(event_name)
    if meter is None:
        raise invalid("event_name", f"No active meter was found for event_name `{event_name}`.")
    for key in (meter.customer_key, meter.value_key) if meter.formula != "count" else ():
        if key not in payload:
            raise invalid("payload", f"Missing required key `{key}` in payload.")
    customer = payload.get(meter.customer_key)
    if customer is None:
        raise invalid("payload", f"Missing required key `{meter.customer_key}` in payload.")
    value = _decimal(payload[meter.value_key], meter.value_key) if meter.formula != "count" else 1
    identifier = identifier or ids.new_id("mtrevt")
    seen = state.identifiers.get(identifier)
    if seen is not None and seen > now - IDENTIFIER_TTL_SECONDS:
        raise StripeError(
            400,
            f"An event already exists with identifier {identifier}.",
            param="identifier",
        )
    event = MeterEvent(identifier, now, event_name, when, dict(payload), Decimal(value))
    state.identifiers[identifier] = now
    state.events.setdefault((meter.id, customer), []).append(event)
    return event


def aggregate_exact(meter: Meter, events: list[MeterEvent], start: int, end: int) -> Decimal:
    """The meter's aggregated value of the events with `start <= timestamp < end`, exact (an
    invoice's usage line bills it)."""
    window = [event for event in events if start <= event.timestamp < end]
    if meter.formula == "count":
        return Decimal(len(window))
    if meter.formula == "last":
        latest: MeterEvent | None = None
        for event in window:  # in arrival order: on a tie, the later event wins
            if latest is None or event.timestamp >= latest.timestamp:
                latest = event
        return latest.value if latest is not None else Decimal(0)
    return sum((event.value for event in window), Decimal(0))


def aggregate(meter: Meter, events: list[MeterEvent], start: int, end: int) -> float:
    """`aggregate_exact` as the float an event summary's `aggregated_value` is."""
    return float(aggregate_exact(meter, events, start, end))


def summaries(
    store: Store, meter_id: str, customer: str, start: int, end: int, grouping: str | None
) -> list[Json]:
    """Event summaries, newest window first (as Stripe lists them)."""
    meter = store.meters.meters.get(meter_id)
    step = {"hour": 3600, "day": DAY}.get(grouping or "", 0)
    for name, value in (("start_time", start), ("end_time", end)):
        if value % (step or 60):
            unit = grouping or "minute"
            raise invalid(name, f"`{name}` must be aligned with {unit} boundaries.")
    if end <= start:
        raise invalid("end_time", "`end_time` must be after `start_time`.")
    events = store.meters.events.get((meter_id, customer), [])
    bounds = [(start, end)] if not step else [(t, t + step) for t in range(start, end, step)]
    return [
        {
            "id": f"mtrusg_{meter_id}_{customer}_{low}",
            "object": "billing.meter_event_summary",
            "aggregated_value": aggregate(meter, events, low, high),
            "end_time": high,
            "livemode": False,
            "meter": meter_id,
            "start_time": low,
        }
        for low, high in reversed(bounds)
    ]
