"""Contract test: every response the emulator gives, and every event's `data.object`, must
validate against Stripe's published OpenAPI schema (spec3.json, see openapi_schema.py).

The emulator records each response (`create_app(record_responses=True)`). This test runs a
broad workload over every route (successes and errors), then validates all recorded responses,
including those of the tests that ran before it in the session. Zero violations allowed.
The schemas are the full spec's when it is present, else the committed trimmed copy's (the same
schemas: test_trimmed_spec.py checks that whenever the full spec is present).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe

from stripe_emulator.objects import API_VERSION
from tests.emulator.conftest import Control
from tests.emulator.openapi_schema import Spec, load_spec

# `object` values -> component schema names.
SCHEMAS = {
    "customer": "customer",
    "subscription": "subscription",
    "checkout.session": "checkout.session",
    "billing_portal.session": "billing_portal.session",
    "price": "price",
    "product": "product",
    "event": "event",
    "item": "item",
    "invoice": "invoice",
    "payment_method": "payment_method",
    "test_helpers.test_clock": "test_helpers.test_clock",
    "billing.meter": "billing.meter",
}


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec()


def expect_error(call: Any) -> None:
    try:
        call()
    except stripe.StripeError:
        return
    raise AssertionError("expected a Stripe error")


def workload(client: stripe.StripeClient, ctl: Control) -> None:
    """Touch every route at least once, with and without errors."""
    customer, price = catalog_workload(client)
    sub_id = checkout_workload(client, ctl, customer.id, price.id)
    billing_cycle_workload(client, ctl, customer.id, sub_id)
    subscription_workload(client, ctl, customer.id, price.id, sub_id)
    events_and_errors_workload(client, ctl, sub_id)


def catalog_workload(client: stripe.StripeClient) -> tuple[stripe.Customer, stripe.Price]:
    customer = client.v1.customers.create(
        params={
            "email": "contract@example.com",
            "name": "Contract",
            "phone": "+15555550100",
            "description": "d",
            "address": {"line1": "1 Main St", "city": "Springfield", "country": "US"},
            "metadata": {"github_user_id": "1"},
        }
    )
    client.v1.customers.update(customer.id, params={"metadata": {"x": "y"}, "address": ""})
    client.v1.customers.retrieve(customer.id)
    client.v1.customers.list(params={"limit": 3, "email": "contract@example.com"})
    product = client.v1.products.create(
        params={
            "name": "Contract plan",
            "description": "desc",
            "default_price_data": {
                "currency": "usd",
                "unit_amount": 700,
                "recurring": {"interval": "year"},
            },
        }
    )
    client.v1.products.retrieve(product.id)
    client.v1.products.update(product.id, params={"active": True, "metadata": {"a": "b"}})
    client.v1.products.list(params={"limit": 5, "active": True})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 900,
            "nickname": "monthly",
            "lookup_key": "contract_monthly",
            "recurring": {"interval": "month", "interval_count": 1},
        }
    )
    client.v1.prices.update(price.id, params={"metadata": {"m": "1"}})
    client.v1.prices.retrieve(price.id, params={"expand": ["product"]})
    client.v1.prices.list(params={"lookup_keys": ["contract_monthly"], "type": "recurring"})
    one_time = client.v1.prices.create(
        params={"product": product.id, "currency": "eur", "unit_amount": 100}
    )
    expect_error(
        lambda: client.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": one_time.id}]}
        )
    )
    return customer, price


def checkout_workload(
    client: stripe.StripeClient, ctl: Control, customer_id: str, price_id: str
) -> str:
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer_id,
            "line_items": [{"price": price_id, "quantity": 2}],
            "success_url": "https://example.com/s",
            "cancel_url": "https://example.com/c",
            "client_reference_id": "1",
            "metadata": {"k": "v"},
            "allow_promotion_codes": True,
            "subscription_data": {"metadata": {"github_user_id": "1"}, "description": "x"},
        }
    )
    client.v1.checkout.sessions.retrieve(session.id)
    client.v1.checkout.sessions.line_items.list(session.id)
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {"name": "Buyer"})
    client.v1.checkout.sessions.retrieve(session.id, params={"expand": ["subscription"]})
    client.v1.checkout.sessions.list(params={"customer": customer_id})
    anonymous = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": price_id, "quantity": 1}],
            "customer_email": "anon@example.com",
            "subscription_data": {"trial_period_days": 3},
        }
    )
    ctl("POST", f"checkout/sessions/{anonymous.id}/complete")
    expired = client.v1.checkout.sessions.create(
        params={"mode": "subscription", "line_items": [{"price": price_id, "quantity": 1}]}
    )
    client.v1.checkout.sessions.expire(expired.id)
    return str(done["subscription"])


def billing_cycle_workload(
    client: stripe.StripeClient, ctl: Control, customer_id: str, sub_id: str
) -> None:
    """A declined renewal, its retry, payment through the API; payment methods; invoices."""
    card = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer_id})
    client.v1.payment_methods.retrieve(card.id)
    client.v1.subscriptions.update(sub_id, {"default_payment_method": card.id})
    ctl("POST", "clock/advance", {"seconds": 33 * 86400})  # renewal fails, one retry fails
    invoices = client.v1.invoices.list(params={"customer": customer_id, "status": "open"})
    expect_error(lambda: client.v1.invoices.pay(invoices.data[0].id))
    client.v1.invoices.pay(invoices.data[0].id, {"payment_method": "pm_card_visa"})
    client.v1.invoices.retrieve(invoices.data[0].id)
    client.v1.invoices.list(params={"subscription": sub_id, "limit": 2})
    spare = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer_id})
    client.v1.customers.update(
        customer_id, {"invoice_settings": {"default_payment_method": spare.id}}
    )
    client.v1.payment_methods.detach(card.id)
    clocks = client.v1.test_helpers.test_clocks
    clock = clocks.create({"frozen_time": invoices.data[0].created, "name": "contract"})
    client.v1.customers.create(params={"test_clock": clock.id})
    clocks.advance(clock.id, {"frozen_time": invoices.data[0].created + 86400})
    clocks.retrieve(clock.id)
    clocks.list(params={"limit": 3})
    clocks.delete(clock.id)
    expect_error(lambda: clocks.retrieve(clock.id))
    expect_error(lambda: client.v1.invoices.retrieve("in_missing"))
    expect_error(lambda: client.v1.payment_methods.attach("pm_missing", {"customer": customer_id}))


def subscription_workload(
    client: stripe.StripeClient, ctl: Control, customer_id: str, price_id: str, sub_id: str
) -> None:
    client.v1.subscriptions.retrieve(
        sub_id, params={"expand": ["customer", "items.data.price.product"]}
    )
    client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    client.v1.subscriptions.update(
        sub_id, params={"cancel_at_period_end": False, "metadata": {"n": "1"}}
    )
    client.v1.subscriptions.update(
        sub_id, params={"pause_collection": {"behavior": "mark_uncollectible"}}
    )
    client.v1.subscriptions.update(sub_id, params={"pause_collection": ""})
    portal = client.v1.billing_portal.sessions.create(
        params={
            "customer": customer_id,
            "return_url": "https://example.com/account",
            "flow_data": {
                "type": "subscription_cancel",
                "subscription_cancel": {"subscription": sub_id},
                "after_completion": {
                    "type": "redirect",
                    "redirect": {"return_url": "https://example.com/bye"},
                },
            },
        }
    )
    ctl("POST", f"billing_portal/sessions/{portal.id}/confirm", {})
    plain_portal = client.v1.billing_portal.sessions.create(params={"customer": customer_id})
    ctl("POST", f"subscriptions/{sub_id}/status", {"status": "past_due"})
    ctl("POST", f"subscriptions/{sub_id}/status", {"status": "paused"})
    client.v1.subscriptions.resume(sub_id)
    ctl("POST", f"billing_portal/sessions/{plain_portal.id}/confirm", {"immediately": True})

    direct = client.v1.subscriptions.create(
        params={
            "customer": customer_id,
            "items": [{"price": price_id, "quantity": 1}],
            "payment_behavior": "default_incomplete",
        }
    )
    trial = client.v1.subscriptions.create(
        params={"customer": customer_id, "items": [{"price": price_id}], "trial_period_days": 1}
    )
    client.v1.subscriptions.list(params={"customer": customer_id, "status": "all"})
    client.v1.subscriptions.list(params={"price": price_id})
    client.v1.subscriptions.cancel(trial.id, params={"cancellation_details": {"comment": "bye"}})
    ctl("POST", "clock/advance", {"seconds": 2 * 86400})  # `direct` expires, trials end
    client.v1.subscriptions.retrieve(direct.id)
    ctl("POST", "generate", {"customers": 20, "events_per_customer": 6})
    client.v1.customers.delete(customer_id)
    client.v1.customers.retrieve(customer_id)


def events_and_errors_workload(client: stripe.StripeClient, ctl: Control, sub_id: str) -> None:
    events = client.v1.events.list(params={"limit": 100})
    client.v1.events.retrieve(events.data[0].id)
    client.v1.events.list(params={"type": "customer.*", "created": {"gte": 0}, "limit": 5})
    client.v1.events.list(params={"types": ["customer.created", "checkout.session.completed"]})
    client.v1.events.list(params={"ending_before": events.data[-1].id, "limit": 2})

    # Errors of every kind.
    expect_error(lambda: client.v1.customers.retrieve("cus_missing"))
    expect_error(lambda: client.v1.customers.create(params={"unknown": "x"}))  # type: ignore[typeddict-unknown-key]
    expect_error(lambda: client.v1.events.list(params={"limit": 1000}))
    expect_error(
        lambda: client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    )
    expect_error(
        lambda: stripe.StripeClient(
            "pk_test_x", base_addresses={"api": ctl.url}, max_network_retries=0
        ).v1.customers.list()
    )
    expect_error(
        lambda: (
            client.v1.customers.create(params={"email": "a"}, options={"idempotency_key": "k1"})
            and client.v1.customers.create(params={"email": "b"}, options={"idempotency_key": "k1"})
        )
    )
    ctl.v1("GET", "nope")
    ctl.raw("POST", "checkout/sessions/cs_test_missing/complete")
    ctl("POST", "faults", {"rate": 1.0, "statuses": [429, 500, 503, 409, 400]})
    for _ in range(8):
        expect_error(lambda: client.v1.customers.list())
    ctl("DELETE", "faults")


def validate_body(spec: Spec, method: str, path: str, status: int, body: Any) -> list[str]:
    if path.startswith("/v1"):
        schema = spec.response_schema(method, path, status)
        if schema is None and status >= 400:  # e.g. an unrecognized URL
            schema = {"$ref": "#/components/schemas/error"}
        if schema is None:
            return [f"{method} {path}: no schema in the spec for status {status}"]
        return spec.errors(spec.validator(schema), body)
    if status != 200:
        return spec.errors(spec.object_validator("error"), body)
    name = SCHEMAS.get(body.get("object")) if isinstance(body, dict) else None
    return spec.errors(spec.object_validator(name), body) if name else []


def test_every_response_and_event_matches_stripe_schema(
    spec: Spec, client: stripe.StripeClient, ctl: Control
) -> None:
    assert spec.version == API_VERSION
    workload(client, ctl)
    violations: list[str] = []
    recorded = ctl.emulator.app.state.recorded.take()
    checked = 0
    for method, path, status, raw in recorded:
        if path.startswith("/_emulator/pages/"):
            continue
        body = json.loads(raw)
        for problem in validate_body(spec, method, path, status, body):
            violations.append(f"{method} {path} -> {status}: {problem}")
        checked += 1
    state = ctl.http.get("/_emulator/state", params={"events": "true"}).json()
    for event in state["events"]:
        for problem in spec.errors(spec.object_validator("event"), event):
            violations.append(f"event {event['type']}: {problem}")
        obj = event["data"]["object"]
        for problem in spec.errors(spec.object_validator(SCHEMAS[obj["object"]]), obj):
            violations.append(f"event {event['type']} data.object: {problem}")
    kinds = {event["type"] for event in state["events"]}
    assert {
        "customer.created",
        "customer.updated",
        "customer.deleted",
        "product.created",
        "price.created",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "customer.subscription.paused",
        "customer.subscription.resumed",
        "checkout.session.completed",
        "checkout.session.expired",
    } <= kinds
    assert checked > 60
    assert violations == [], "\n".join(violations[:50])
