"""The gateway's direct GETs (pages of events, reads of objects) keep one connection alive per
thread, and replace a kept connection that the server closed at once: no retry of the
caller's is spent on it, and no backoff is waited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from collab_billing.config import Settings
from collab_billing.stripe_gateway import StripeGateway


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    requests = 0
    close_after_each = False  # without saying so: the client finds out on its next request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the server closes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:
        self.server.requests += 1
        body = b'{"id": "cus_1", "object": "customer"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.server.close_after_each

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


def gateway_for(server: _Server) -> StripeGateway:
    settings = Settings(
        stripe_api_key="sk_test_connections",
        stripe_api_base=f"http://127.0.0.1:{server.server_address[1]}",
        stripe_max_network_retries=0,  # any failure the gateway did not absorb would raise
        stripe_requests_per_second=1_000,
    )
    return StripeGateway(settings)


def test_one_thread_keeps_one_connection(server: _Server) -> None:
    gateway = gateway_for(server)
    for _ in range(5):
        assert gateway.retrieve_customer("cus_1")["id"] == "cus_1"
    assert (server.connections, server.requests) == (1, 5)


def test_a_connection_the_server_closed_is_replaced_at_once(server: _Server) -> None:
    server.close_after_each = True
    gateway = gateway_for(server)
    for _ in range(3):
        assert gateway.retrieve_customer("cus_1")["id"] == "cus_1"
    assert (server.connections, server.requests) == (3, 3)


def test_threads_do_not_share_a_connection(server: _Server) -> None:
    gateway = gateway_for(server)
    ready = threading.Barrier(3)

    def read_twice() -> None:
        ready.wait()
        for _ in range(2):
            gateway.retrieve_customer("cus_1")

    threads = [threading.Thread(target=read_twice) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (server.connections, server.requests) == (3, 6)
