"""`/v1/events`: retrieve, and list newest first with Stripe's filters.

Events older than Stripe's 30-day retention window (by the emulator's clock) are neither
listed nor retrievable, as on Stripe.
"""

from __future__ import annotations

from stripe_emulator.api import Call, created_range, list_args, route
from stripe_emulator.errors import StripeError, invalid, not_found
from stripe_emulator.objects import Json, list_json, list_object

MAX_TYPES = 20


@route("GET", "/v1/events/{id}")
def retrieve_event(call: Call) -> Json | bytes:
    call.params.finish()
    store = call.store
    event = store.events.get(call.id)
    if event is None or event.created < store.retained_since():
        raise not_found("event", call.id)
    return store.render_event(event) if call.expanding else store.event_json(event)


def _type_filter(call: Call) -> list[str] | None:
    p = call.params
    single = p.string("type")
    many = p.array("types")
    if single is not None and many is not None:
        raise StripeError(
            400,
            "You may only specify one of these parameters: type, types.",
            code="parameters_exclusive",
            param="types",
        )
    if many is not None:
        if len(many) > MAX_TYPES:
            raise invalid("types", f"You may pass at most {MAX_TYPES} types (got {len(many)}).")
        if not all(isinstance(name, str) and name for name in many):
            raise invalid("types", "Invalid array: types must be a list of event types")
        return list(many)
    return [single] if single else None


@route("GET", "/v1/events")
def list_events(call: Call) -> Json | bytes:
    p = call.params
    args = list_args(p)
    types = _type_filter(call)
    wildcards = not call.params.has("types")
    gte, lt = created_range(p)
    p.ignore("delivery_success")
    p.finish()
    store = call.store
    log = store.events
    after = _cursor(call, args.starting_after, "starting_after")
    before = _cursor(call, args.ending_before, "ending_before")
    events, has_more = log.page(
        types=types,
        wildcards=wildcards,
        created_gte=gte,
        created_lt=lt,
        oldest=store.retained_since(),
        after=after,
        before=before,
        limit=args.limit,
    )
    if call.expanding:
        data = [store.render_event(event) for event in events]
        return list_object(data, has_more, "/v1/events")
    return list_json([store.event_json(event) for event in events], has_more, "/v1/events")


def _cursor(call: Call, event_id: str | None, param: str) -> int | None:
    if event_id is None:
        return None
    position = call.store.events.positions.get(event_id)
    if position is None:
        raise not_found("event", event_id, param)
    return position
