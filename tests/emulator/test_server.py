"""Serving: ports, keys, headers, routing errors, expansion, the hosted pages."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import stripe
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stripe_emulator.server import RunningEmulator, start_in_thread
from stripe_emulator.testing import stripe_client
from tests.emulator.conftest import Control, recurring_price
from tests.servers import free_port


def test_start_in_thread_with_exact_key() -> None:
    with start_in_thread(port=0, api_key="sk_test_only_this") as running:
        assert running.port > 0
        assert running.url == f"http://127.0.0.1:{running.port}"
        assert stripe_client(running.url, "sk_test_only_this").v1.customers.list().data == []
        with pytest.raises(stripe.AuthenticationError):
            stripe_client(running.url, "sk_test_another").v1.customers.list()
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/", timeout=2)


def test_served_by_httptools_on_uvloop(running: RunningEmulator) -> None:
    assert running.server.config.http_protocol_class is HttpToolsProtocol
    assert [type(server).__module__ for server in running.server.servers] == ["uvloop.loop"]


def test_auth_and_routing_errors(ctl: Control) -> None:
    missing = ctl.v1("GET", "customers", key=None)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert ctl.v1("GET", "customers", key="sk_live_nope").status_code == 401
    basic = ctl.http.get("/v1/customers", auth=("sk_test_basic", ""))
    assert basic.status_code == 200
    unknown = ctl.v1("GET", "nothing_here")
    assert unknown.status_code == 404
    assert "Unrecognized request URL" in unknown.json()["error"]["message"]
    assert ctl.v1("PUT", "customers").status_code == 404
    assert ctl.v1("GET", "customers", headers={"Stripe-Version": "garbage"}).status_code == 400
    ok = ctl.v1("GET", "customers", headers={"Stripe-Version": "2024-06-20"})
    assert ok.status_code == 200
    assert ok.headers["Stripe-Version"] == "2024-06-20"
    assert ok.headers["Request-Id"].startswith("req_")


def test_raw_form_encoding_with_appended_arrays(ctl: Control) -> None:
    created = ctl.v1("POST", "customers", data={"metadata[a]": "1", "email": "f@example.com"})
    assert created.json()["metadata"] == {"a": "1"}
    listing = ctl.v1(
        "GET", "events", params=[("types[]", "customer.created"), ("types[]", "customer.updated")]
    )
    assert [e["type"] for e in listing.json()["data"]] == ["customer.created"]


def test_expand(client: stripe.StripeClient, ctl: Control) -> None:
    customer = client.v1.customers.create()
    price = recurring_price(client)
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": price.id}], "expand": ["customer"]}
    )
    assert sub.customer.id == customer.id  # type: ignore[union-attr]
    deep = client.v1.subscriptions.retrieve(sub.id, params={"expand": ["items.data.price.product"]})
    assert deep["items"].data[0].price.product.object == "product"  # type: ignore[union-attr]
    listed = client.v1.subscriptions.list(params={"expand": ["data.customer"]})
    assert listed.data[0].customer.id == customer.id  # type: ignore[union-attr]
    with pytest.raises(stripe.InvalidRequestError):  # Stripe's limit: four levels
        client.v1.subscriptions.list(params={"expand": ["data.items.data.price.product"]})
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.retrieve(sub.id, params={"expand": ["status"]})


def test_hosted_pages(client: stripe.StripeClient, ctl: Control) -> None:
    price = recurring_price(client)
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "https://example.com/done?id={CHECKOUT_SESSION_ID}",
        }
    )
    assert session.url is not None
    page = httpx.get(session.url)
    assert page.status_code == 200 and "Pay" in page.text
    paid = httpx.post(session.url, data={"action": "pay", "email": "web@example.com"})
    assert paid.status_code == 303
    assert paid.headers["location"] == f"https://example.com/done?id={session.id}"
    done = client.v1.checkout.sessions.retrieve(session.id)
    assert done.status == "complete" and done.customer_details is not None
    assert done.customer_details.email == "web@example.com"

    portal = client.v1.billing_portal.sessions.create(
        params={"customer": str(done.customer), "return_url": "https://example.com/account"}
    )
    canceled = httpx.post(portal.url, data={"action": "now"})
    assert canceled.status_code == 303
    assert client.v1.subscriptions.retrieve(str(done.subscription)).status == "canceled"


@pytest.mark.parametrize("flags", [[], ["--no-access-log"]])
def test_command_line_access_log(flags: list[str], tmp_path: Path) -> None:
    port = free_port()
    output = tmp_path / "emulator.log"
    with output.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "stripe_emulator", "--port", str(port), *flags],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        client = stripe_client(f"http://127.0.0.1:{port}", "sk_test_cli")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.v1.customers.create({"email": "cli@example.com"})
                break
            except stripe.APIConnectionError:
                assert process.poll() is None, "the emulator exited"
                assert time.monotonic() < deadline, "the emulator did not start"
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    logged = output.read_text()
    assert "Uvicorn running on" in logged
    assert ('"POST /v1/customers HTTP/1.1" 200' in logged) == (flags == [])
