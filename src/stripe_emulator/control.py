"""Test control routes under `/_emulator/` (JSON in, JSON out, no API key needed).

Errors use the API's shape, `{"error": {"type", "message", "code"?, "param"?}}` (400/404).

- POST checkout/sessions/{id}/complete `{"email"?, "name"?, "card"?, "promotion_code"?,
  "payment_method"?}` -> the checkout.session (status complete, with `customer` and
  `subscription`). `card` says whether the customer gives a card where Checkout lets them
  skip it (a trial with `payment_method_collection=if_required`: none unless `card: true`);
  elsewhere Checkout always takes one (`card: false` is a 400); `promotion_code` is the code
  the customer enters (`allow_promotion_codes` sessions); `payment_method` is the test card
  entered (default `pm_card_visa`; a declining one answers 402).
- POST billing_portal/sessions/{id}/confirm: what the customer does in the session's flow.
  Cancel (and no flow) `{"immediately"?: false, "subscription"?, "comment"?, "feedback"?}` ->
  the subscription (set to cancel at period end, or canceled now);
  `subscription_update_confirm` `{}` and `subscription_update` `{"price"?, "quantity"?}` -> the
  updated subscription; `payment_method_update` `{}` -> `{"subscriptions": [...]}` (a new card).
- POST subscriptions/{id}/status `{"status": "past_due"}` -> the subscription.
- POST prices/{id}/delete `{}` -> the price as it was: a price deleted in the Dashboard
  (`price.deleted`; the API has no such route).
- POST customers/{id}/discount `{"coupon"}` or `{"promotion_code"}` -> the discount: one
  applied to the customer in the Dashboard (customer_discounts.py; the API takes none).
- POST clock/advance `{"seconds": N}` (0 to two years), GET clock -> `{"now", "offset"}`.
- POST faults `{"rate", "statuses", "latency_ms", "drop_rate", "path_prefix", "retry_after",
  "drop_after_processing", "count", "seed"}` (all optional), GET, DELETE
  -> `{"faults": {...} | null}`.
- POST rate_limit `{"requests_per_second", "path_prefix", "burst"?}`, GET, DELETE
  -> `{"rate_limit": {...} | null}`.
- POST webhook_endpoints `{"url", "secret"?, "enabled_events"?}`
  -> `{"id", "url", "secret", "enabled_events"}`; GET -> `{"data": [...]}`;
  DELETE webhook_endpoints/{id} -> `{"id", "deleted": true}`;
  GET webhook_deliveries -> `{"data": [{"event_id", "endpoint_id", "attempt", "status",
  "error", "at"}]}`; POST webhook_deliveries/drop `{"count": 1}` -> `{"dropping": 1}`: the
  next deliveries are lost (never sent, never retried), as a missed webhook.
- POST generate `{"customers", "events_per_customer", "price"?, "seed"?, "span_seconds"?,
  "first_github_user_id"?, "same_second_share"?, "ambiguous_ties"?}` -> `{"customers",
  "subscriptions", "events", "seconds", "price", "first_github_user_id", "tied_events",
  "ambiguous_ties"}` (ties: see generate.py).
- GET requests -> `{"total", "by_route": {"GET /v1/events": n, ...}, "by_status": {"200": n},
  "in_flight", "max_in_flight"}` (`/v1` requests since the last DELETE requests or state);
  DELETE requests zeroes them.
- GET state[?events=true] -> every object as Stripe renders it, `event_count` (and `events`,
  `meter_events`);
  DELETE state -> `{"reset": true}` (objects, events, clock, faults, rate limit, webhooks).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, fields
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripe_emulator import (
    catalog_deletions,
    invoice_objects,
    meters,
    objects,
    portal_flows,
    sessions,
)
from stripe_emulator.api import error_response, json_response
from stripe_emulator.counter import RequestCounts
from stripe_emulator.entitlements import render_feature
from stripe_emulator.errors import StripeError, bad_request, not_found
from stripe_emulator.faults import FaultConfig, Faults, RateLimitConfig
from stripe_emulator.generate import generate
from stripe_emulator.store import Store
from stripe_emulator.subscriptions import set_status
from stripe_emulator.test_clocks import MAX_ADVANCE
from stripe_emulator.timeline import advance
from stripe_emulator.webhooks import WebhookDispatcher

Body = dict[str, Any]
ControlHandler = Callable[[Request, Body], Awaitable[Any]]


async def _body(request: Request) -> Body:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    return body


def _endpoint(handler: ControlHandler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            result = await handler(request, await _body(request))
        except StripeError as error:
            return error_response(error)
        return json_response(200, result)

    return endpoint


def _store(request: Request) -> Store:
    store: Store = request.app.state.emulator
    return store


def _typed(body: Body, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key, default)
    if value is not None and (
        not isinstance(value, kind) or (isinstance(value, bool) and kind is int)
    ):
        raise bad_request(f"`{key}` has the wrong type.", key)
    return value


def _only(body: Body, allowed: set[str]) -> None:
    extra = sorted(set(body) - allowed)
    if extra:
        raise StripeError(
            400, f"Received unknown parameter: {extra[0]}", code="parameter_unknown", param=extra[0]
        )


async def complete_checkout(request: Request, body: Body) -> Any:
    _only(body, {"email", "name", "card", "promotion_code", "payment_method"})
    store = _store(request)
    with store.lock:
        session = sessions.complete_checkout_session(
            store,
            request.path_params["id"],
            email=_typed(body, "email", str),
            name=_typed(body, "name", str),
            card=_typed(body, "card", bool),
            promotion_code=_typed(body, "promotion_code", str),
            payment_method=_typed(body, "payment_method", str) or "pm_card_visa",
        )
        return objects.checkout_session(session)


async def confirm_portal(request: Request, body: Body) -> Any:
    """What the customer does in the portal session: its flow's change (cancel by default)."""
    store = _store(request)
    with store.lock:
        session = store.portal_sessions.get(request.path_params["id"])
        kind = session.flow["type"] if session.flow is not None else None
        if kind == "payment_method_update":
            _only(body, set())
            updated = portal_flows.confirm_payment_method(store, session)
            return {"subscriptions": [objects.subscription(sub) for sub in updated]}
        if kind in portal_flows.UPDATE_FLOWS:
            _only(body, {"price", "quantity"})
            sub = portal_flows.confirm_update(
                store,
                session,
                price=_typed(body, "price", str),
                quantity=_typed(body, "quantity", int),
            )
            return objects.subscription(sub)
        _only(body, {"immediately", "subscription", "comment", "feedback"})
        sub = sessions.confirm_portal_cancel(
            store,
            request.path_params["id"],
            immediately=bool(_typed(body, "immediately", bool, False)),
            subscription=_typed(body, "subscription", str),
            comment=_typed(body, "comment", str),
            feedback=_typed(body, "feedback", str),
        )
        return objects.subscription(sub)


async def delete_price(request: Request, body: Body) -> Any:
    _only(body, set())
    store = _store(request)
    with store.lock:
        return catalog_deletions.delete_price(store, request.path_params["id"])


async def subscription_status(request: Request, body: Body) -> Any:
    _only(body, {"status"})
    status = _typed(body, "status", str)
    if status is None:
        raise bad_request("Missing `status`.", "status")
    store = _store(request)
    with store.lock:
        return objects.subscription(set_status(store, request.path_params["id"], status))


async def clock(request: Request, body: Body) -> Any:
    store = _store(request)
    if request.method == "POST":
        _only(body, {"seconds"})
        seconds = _typed(body, "seconds", (int, float))
        # As far at a time as Stripe moves a test clock: every renewal on the way is made.
        if seconds is None or not 0 <= seconds <= MAX_ADVANCE:
            raise bad_request(
                f"`seconds` must be a number from 0 to {MAX_ADVANCE} (two years).", "seconds"
            )
        with store.lock:
            advance(store, int(seconds))
    return {"now": store.now(), "offset": store.clock.offset}


def _dataclass_from(cls: Any, body: Body) -> Any:
    names = {field.name for field in fields(cls)}
    _only(body, names)
    try:
        config = cls(**body)
    except TypeError as exc:
        raise bad_request(str(exc)) from None
    return config


async def faults(request: Request, body: Body) -> Any:
    state: Faults = request.app.state.faults
    if request.method == "POST":
        config: FaultConfig = _dataclass_from(FaultConfig, body)
        if not (0 <= config.rate <= 1 and 0 <= config.drop_rate <= 1):
            raise bad_request("`rate` and `drop_rate` must be between 0 and 1.")
        if not config.statuses or not all(
            isinstance(s, int) and 400 <= s < 600 for s in config.statuses
        ):
            raise bad_request("`statuses` must be a list of HTTP error statuses.", "statuses")
        state.set_faults(config)
    elif request.method == "DELETE":
        state.set_faults(None)
    return {"faults": state.describe()["faults"]}


async def rate_limit(request: Request, body: Body) -> Any:
    state: Faults = request.app.state.faults
    if request.method == "POST":
        config: RateLimitConfig = _dataclass_from(RateLimitConfig, body)
        if config.requests_per_second <= 0:
            raise bad_request("`requests_per_second` must be positive.", "requests_per_second")
        state.set_rate_limit(config)
    elif request.method == "DELETE":
        state.set_rate_limit(None)
    return {"rate_limit": state.describe()["rate_limit"]}


async def webhook_endpoints(request: Request, body: Body) -> Any:
    dispatcher: WebhookDispatcher = request.app.state.webhooks
    if request.method == "POST":
        _only(body, {"url", "secret", "enabled_events"})
        url = _typed(body, "url", str)
        if not url or not url.startswith(("http://", "https://")):
            raise bad_request("`url` must be an http(s) URL.", "url")
        secret = _typed(body, "secret", str)
        if secret is not None and not secret.startswith("whsec_"):
            raise bad_request("`secret` must start with whsec_.", "secret")
        endpoint = dispatcher.add(url, secret, _typed(body, "enabled_events", list))
        return asdict(endpoint)
    return {"data": dispatcher.describe()}


async def webhook_endpoint(request: Request, body: Body) -> Any:
    dispatcher: WebhookDispatcher = request.app.state.webhooks
    endpoint_id = request.path_params["id"]
    if not dispatcher.remove(endpoint_id):
        raise not_found("webhook endpoint", endpoint_id)
    return {"id": endpoint_id, "deleted": True}


async def webhook_deliveries(request: Request, body: Body) -> Any:
    dispatcher: WebhookDispatcher = request.app.state.webhooks
    return {"data": dispatcher.log()}


async def drop_deliveries(request: Request, body: Body) -> Any:
    _only(body, {"count"})
    count = _typed(body, "count", int, 1)
    if count < 0:
        raise bad_request("`count` must be >= 0.", "count")
    request.app.state.webhooks.drop_next(count)
    return {"dropping": count}


async def generate_route(request: Request, body: Body) -> Any:
    allowed = {
        "customers",
        "events_per_customer",
        "price",
        "seed",
        "span_seconds",
        "first_github_user_id",
        "same_second_share",
        "ambiguous_ties",
    }
    _only(body, allowed)
    customers = _typed(body, "customers", int, 0)
    per_customer = _typed(body, "events_per_customer", int, 2)
    if customers < 0 or per_customer < 1:
        raise bad_request("`customers` must be >= 0 and `events_per_customer` >= 1.")
    share = _typed(body, "same_second_share", (int, float), 0.0)
    ties = _typed(body, "ambiguous_ties", int, 0)
    if not 0 <= share <= 1 or ties < 0:
        raise bad_request("`same_second_share` must be in [0, 1] and `ambiguous_ties` >= 0.")
    store = _store(request)

    def work() -> Any:
        with store.lock:
            return generate(
                store,
                customers=customers,
                events_per_customer=per_customer,
                price_id=_typed(body, "price", str),
                seed=_typed(body, "seed", int),
                span_seconds=_typed(body, "span_seconds", int, 7 * 86_400),
                first_github_user_id=_typed(body, "first_github_user_id", int),
                same_second_share=float(share),
                ambiguous_ties=ties,
            )

    # Built on a worker thread under the store lock. API requests arriving meanwhile wait for
    # the lock (on the event loop), so generate before starting a benchmark's clients.
    return asdict(await run_in_threadpool(work))


async def state(request: Request, body: Body) -> Any:
    store = _store(request)
    if request.method == "DELETE":
        with store.lock:
            store.reset()
        request.app.state.webhooks.reset()
        request.app.state.faults.set_faults(None)
        request.app.state.faults.set_rate_limit(None)
        request.app.state.requests.reset()
        return {"reset": True}
    with_events = request.query_params.get("events") in ("1", "true")
    with store.lock:
        return dump(store, with_events)


async def requests(request: Request, body: Body) -> Any:
    counts: RequestCounts = request.app.state.requests
    if request.method == "DELETE":
        counts.reset()
    return counts.describe()


def dump(store: Store, with_events: bool = False) -> Body:
    """Every object as Stripe renders it (events only on request: there may be millions)."""
    result: Body = {
        "now": store.now(),
        "customers": [objects.customer(c) for c in store.customers.rows.values()],
        "products": [objects.product(p) for p in store.products.rows.values()],
        "prices": [objects.price(p) for p in store.prices.rows.values()],
        "subscriptions": [objects.subscription(s) for s in store.subscriptions.rows.values()],
        "checkout_sessions": [
            objects.checkout_session(s) for s in store.checkout_sessions.rows.values()
        ],
        "billing_portal_sessions": [
            objects.portal_session(s) for s in store.portal_sessions.rows.values()
        ],
        "invoices": [invoice_objects.invoice(i) for i in store.invoices.rows.values()],
        "payment_methods": [
            invoice_objects.payment_method(m) for m in store.payment_methods.rows.values()
        ],
        "test_clocks": [
            invoice_objects.test_clock(c) for c in store.test_clocks.rows.values() if not c.deleted
        ],
        "meters": [meters.render(m) for m in store.meters.meters.rows.values()],
        "features": [render_feature(f) for f in store.entitlements.features.rows.values()],
        "event_count": len(store.events),
    }
    if with_events:
        result["events"] = [store.render_event(event) for event in store.events.events]
        result["meter_events"] = [
            meters.render_event(event)
            for events in store.meters.events.values()
            for event in events
        ]
    return result


def _r(path: str, handler: ControlHandler, methods: list[str]) -> Route:
    return Route(path, _endpoint(handler), methods=methods)


routes = [
    _r("/_emulator/checkout/sessions/{id}/complete", complete_checkout, ["POST"]),
    _r("/_emulator/billing_portal/sessions/{id}/confirm", confirm_portal, ["POST"]),
    _r("/_emulator/subscriptions/{id}/status", subscription_status, ["POST"]),
    _r("/_emulator/prices/{id}/delete", delete_price, ["POST"]),
    _r("/_emulator/clock/advance", clock, ["POST"]),
    _r("/_emulator/clock", clock, ["GET"]),
    _r("/_emulator/faults", faults, ["GET", "POST", "DELETE"]),
    _r("/_emulator/rate_limit", rate_limit, ["GET", "POST", "DELETE"]),
    _r("/_emulator/webhook_endpoints", webhook_endpoints, ["GET", "POST"]),
    _r("/_emulator/webhook_endpoints/{id}", webhook_endpoint, ["DELETE"]),
    _r("/_emulator/webhook_deliveries", webhook_deliveries, ["GET"]),
    _r("/_emulator/webhook_deliveries/drop", drop_deliveries, ["POST"]),
    _r("/_emulator/generate", generate_route, ["POST"]),
    _r("/_emulator/state", state, ["GET", "DELETE"]),
    _r("/_emulator/requests", requests, ["GET", "DELETE"]),
]
