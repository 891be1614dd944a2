"""Fault injection (429 with Retry-After, 500, latency, dropped connections) and the rate limit."""

from __future__ import annotations

import time

import pytest
import stripe

from tests.emulator.conftest import Control


@pytest.fixture(autouse=True)
def clear_faults(ctl: Control) -> None:
    ctl("DELETE", "faults")
    ctl("DELETE", "rate_limit")


def test_injected_429_carries_retry_after(client: stripe.StripeClient, ctl: Control) -> None:
    config = ctl("POST", "faults", {"rate": 1.0, "statuses": [429], "retry_after": 3})
    assert config["faults"]["rate"] == 1.0
    with pytest.raises(stripe.RateLimitError) as raised:
        client.v1.customers.list()
    assert raised.value.http_status == 429
    assert raised.value.headers is not None
    assert raised.value.headers.get("Retry-After") == "3"
    assert raised.value.json_body is not None
    assert raised.value.json_body["error"]["code"] == "rate_limit"
    assert raised.value.request_id is not None
    # Control routes are never faulted.
    assert ctl("GET", "faults")["faults"]["statuses"] == [429]


def test_injected_500_and_path_prefix(client: stripe.StripeClient, ctl: Control) -> None:
    ctl("POST", "faults", {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/events"})
    assert client.v1.customers.list().data == []  # other routes are unaffected
    with pytest.raises(stripe.APIError) as raised:
        client.v1.events.list()
    assert raised.value.http_status == 500
    ctl("DELETE", "faults")
    assert client.v1.events.list().data == []


def test_count_limits_faults_and_sdk_retries_through(ctl: Control) -> None:
    ctl("POST", "faults", {"rate": 1.0, "statuses": [500], "count": 2})
    retrying = stripe.StripeClient(
        "sk_test_x", base_addresses={"api": ctl.url}, max_network_retries=2
    )
    retrying._requestor._get_http_client()._sleep_time_seconds = lambda *_: 0.01  # type: ignore[attr-defined,method-assign]
    assert retrying.v1.customers.list().data == []
    assert ctl("GET", "faults")["faults"]["count"] == 0


def test_latency(client: stripe.StripeClient, ctl: Control) -> None:
    ctl("POST", "faults", {"latency_ms": 150})
    started = time.perf_counter()
    client.v1.customers.list()
    assert time.perf_counter() - started >= 0.15


def test_dropped_connection_is_a_network_error(client: stripe.StripeClient, ctl: Control) -> None:
    ctl("POST", "faults", {"drop_rate": 1.0})
    with pytest.raises(stripe.APIConnectionError) as raised:
        client.v1.customers.create(params={"email": "lost@example.com"})
    assert raised.value.should_retry is True  # looks like a connection failure to the SDK
    ctl("DELETE", "faults")
    assert client.v1.customers.list().data == []  # dropped before processing


def test_drop_after_processing_then_idempotent_retry(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl("POST", "faults", {"drop_rate": 1.0, "drop_after_processing": True, "count": 1})
    options: stripe.RequestOptions = {"idempotency_key": "drop-then-retry"}
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create(params={"email": "once@example.com"}, options=options)
    retried = client.v1.customers.create(params={"email": "once@example.com"}, options=options)
    assert retried.last_response is not None
    assert retried.last_response.headers.get("Idempotent-Replayed") == "true"
    assert [c.id for c in client.v1.customers.list().data] == [retried.id]


def test_rate_limit(client: stripe.StripeClient, ctl: Control) -> None:
    ctl("POST", "rate_limit", {"requests_per_second": 5, "path_prefix": "/v1/customers"})
    outcomes = []
    for _ in range(12):
        try:
            client.v1.customers.list()
            outcomes.append(200)
        except stripe.RateLimitError as error:
            assert error.headers is not None and "Retry-After" in error.headers
            outcomes.append(429)
    assert outcomes[:5] == [200] * 5
    assert 429 in outcomes
    assert client.v1.events.list().data is not None  # other prefixes are not limited
    ctl("DELETE", "rate_limit")
    client.v1.customers.list()


def test_fault_body_validation(ctl: Control) -> None:
    assert ctl.raw("POST", "faults", {"rate": 2}).status_code == 400
    assert ctl.raw("POST", "faults", {"statuses": [200]}).status_code == 400
    assert ctl.raw("POST", "faults", {"bogus": 1}).status_code == 400
    assert ctl.raw("POST", "rate_limit", {"requests_per_second": 0}).status_code == 400
