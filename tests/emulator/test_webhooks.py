"""Webhook delivery to a local receiver, signed as Stripe signs, with retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Control

SECRET = "whsec_test_secret_for_emulator"


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, str]] = []
        self.fail_first = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((body, self.headers.get("Stripe-Signature", "")))
                failing = receiver.fail_first > 0
                receiver.fail_first -= 1
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[stripe.Event]:
        return [stripe.Webhook.construct_event(body, sig, SECRET) for body, sig in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


def wait(ctl: Control) -> None:
    assert ctl.emulator.app.state.webhooks.wait_idle(10)


def test_signed_delivery(client: stripe.StripeClient, ctl: Control, receiver: Receiver) -> None:
    endpoint = ctl("POST", "webhook_endpoints", {"url": receiver.url, "secret": SECRET})
    assert endpoint["id"].startswith("we_") and endpoint["secret"] == SECRET
    customer = client.v1.customers.create(params={"email": "hook@example.com"})
    client.v1.customers.update(customer.id, params={"name": "Hook"})
    wait(ctl)
    events = receiver.events()  # raises SignatureVerificationError on a bad signature
    assert [event.type for event in events] == ["customer.created", "customer.updated"]
    assert events[0].data.object.id == customer.id
    body, header = receiver.requests[0]
    stripe.WebhookSignature.verify_header(body.decode(), header, SECRET, tolerance=300)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body, header, "whsec_wrong")
    assert client.v1.events.retrieve(events[0].id).pending_webhooks == 0
    ctl("DELETE", f"webhook_endpoints/{endpoint['id']}")
    client.v1.customers.create()
    wait(ctl)
    assert len(receiver.requests) == 2


def test_failed_deliveries_are_retried(
    client: stripe.StripeClient, ctl: Control, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    ctl("POST", "webhook_endpoints", {"url": receiver.url, "secret": SECRET})
    client.v1.customers.create()
    wait(ctl)
    assert len(receiver.requests) == 3
    assert len({body for body, _ in receiver.requests}) == 1  # the same event each time
    attempts = ctl("GET", "webhook_deliveries")["data"]
    assert [a["status"] for a in attempts] == [500, 500, 200]


def test_enabled_events_filter_and_generated_secret(
    client: stripe.StripeClient, ctl: Control, receiver: Receiver
) -> None:
    endpoint = ctl(
        "POST", "webhook_endpoints", {"url": receiver.url, "enabled_events": ["customer.updated"]}
    )
    assert endpoint["secret"].startswith("whsec_")
    customer = client.v1.customers.create()
    client.v1.customers.update(customer.id, params={"name": "x"})
    wait(ctl)
    assert len(receiver.requests) == 1
    body, header = receiver.requests[0]
    event = stripe.Webhook.construct_event(body, header, endpoint["secret"])
    assert event.type == "customer.updated"
    assert ctl("GET", "webhook_endpoints")["data"][0]["url"] == receiver.url
    assert ctl.raw("POST", "webhook_endpoints", {"url": "ftp://x"}).status_code == 400


def test_dropped_deliveries_are_lost_not_retried(
    client: stripe.StripeClient, ctl: Control, receiver: Receiver
) -> None:
    ctl("POST", "webhook_endpoints", {"url": receiver.url, "secret": SECRET})
    assert ctl("POST", "webhook_deliveries/drop", {"count": 1}) == {"dropping": 1}
    lost = client.v1.customers.create()
    wait(ctl)
    kept = client.v1.customers.create()
    wait(ctl)
    assert [event.data.object.id for event in receiver.events()] == [kept.id]
    attempts = ctl("GET", "webhook_deliveries")["data"]
    assert [(a["status"], a["error"]) for a in attempts] == [
        (None, "dropped (emulated)"),
        (200, None),
    ]
    assert client.v1.events.list(params={"limit": 2}).data[1].data.object.id == lost.id
    assert ctl.raw("POST", "webhook_deliveries/drop", {"count": -1}).status_code == 400
