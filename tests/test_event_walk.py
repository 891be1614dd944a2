"""`StripeGateway.walk_events`: a backlog's pages, each read with `ending_before` the newest
event of the page before, with the request for the next page sent before the current one is
handed over. Against a local HTTP server that lists events as Stripe does, and that can be
told to answer a request differently (fail, close, rate-limit, write its JSON otherwise)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from collab_billing.config import Settings
from collab_billing.reconcile.events import RELEVANT_TYPES
from collab_billing.stripe_gateway import EventPage, StripeGateway, StripeGatewayError

EVENTS = [f"evt_{n:04d}" for n in range(1, 351)]  # oldest first
PAGE = 100


def event(event_id: str, id_first: bool) -> dict[str, Any]:
    subscription = {"id": "sub_1", "object": "subscription", "customer": "cus_1"}
    fields = {"object": "event", "type": "customer.subscription.updated"}
    fields |= {"created": int(event_id[4:]), "data": {"object": subscription}}
    return {"id": event_id, **fields} if id_first else {**fields, "id": event_id}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str | None] = []  # `ending_before` of each request, in order
        self.connections = 0
        self.id_first = True
        self.pretty = False
        # By request number (1-based): what to answer instead of the page.
        self.answers: dict[int, Callable[[_Handler, dict[str, Any]], None]] = {}

    def page(self, ending_before: str | None) -> dict[str, Any]:
        """Stripe's page: the `PAGE` events just above `ending_before`, newest first."""
        above = EVENTS[EVENTS.index(ending_before) + 1 :] if ending_before else EVENTS
        data = [event(event_id, self.id_first) for event_id in reversed(above[:PAGE])]
        return {"object": "list", "data": data, "has_more": len(above) > PAGE, "url": "/v1/events"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        ending_before = query.get("ending_before", [None])[0]
        self.server.requests.append(ending_before)
        page = self.server.page(ending_before)
        answer = self.server.answers.get(len(self.server.requests))
        if answer is not None:
            answer(self, page)
        else:
            self.reply(200, page)

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        encoded = body if isinstance(body, bytes) else self.encode(body)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def encode(self, body: Any) -> bytes:
        return json.dumps(body, indent=2 if self.server.pretty else None).encode()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()


def gateway_for(server: _Server, retries: int = 0) -> StripeGateway:
    settings = Settings(
        stripe_api_key="sk_test_walk",
        stripe_api_base=f"http://127.0.0.1:{server.server_address[1]}",
        stripe_max_network_retries=retries,
        stripe_requests_per_second=1_000,
    )
    return StripeGateway(settings)


def walk(gateway: StripeGateway, anchor: str = "evt_0010") -> Iterator[EventPage]:
    return gateway.walk_events(types=RELEVANT_TYPES, ending_before=anchor)


def read_all(gateway: StripeGateway) -> list[list[str]]:
    return [[e.id for e in page.events] for page in walk(gateway)]


def expected_pages() -> list[list[str]]:
    above = EVENTS[EVENTS.index("evt_0010") + 1 :]
    return [list(reversed(above[n : n + PAGE])) for n in range(0, len(above), PAGE)]


def wait_for(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 2
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "indented like Stripe"])
def test_the_next_page_is_asked_for_before_this_one_is_handed_over(
    server: _Server, pretty: bool
) -> None:
    server.pretty = pretty
    pages = []
    for taken, page in enumerate(walk(gateway_for(server)), start=1):
        pages.append([e.id for e in page.events])
        if page.has_more:  # the request for the next page is already at the server
            assert wait_for(lambda taken=taken: len(server.requests) == taken + 1)
        assert len(server.requests) == taken + page.has_more
    assert pages == expected_pages()
    assert server.requests == ["evt_0010", "evt_0110", "evt_0210", "evt_0310"]
    assert server.connections == 1


def test_json_whose_events_do_not_start_with_their_id_is_walked_one_request_at_a_time(
    server: _Server,
) -> None:
    server.id_first = False
    pages = []
    for taken, page in enumerate(walk(gateway_for(server)), start=1):
        pages.append([e.id for e in page.events])
        assert len(server.requests) == taken
    assert pages == expected_pages()


def test_a_wrong_guess_costs_its_request_and_nothing_else(server: _Server) -> None:
    """The first page's body names another id first (a duplicate key, decoded as the last):
    the request sent ahead for it is answered and dropped, and the right page read."""

    def duplicate_id(handler: _Handler, page: dict[str, Any]) -> None:
        body = handler.encode(page).replace(
            b'{"id": "evt_0110"', b'{"id": "evt_0050", "id": "evt_0110"', 1
        )
        handler.reply(200, body)

    server.answers[1] = duplicate_id
    assert read_all(gateway_for(server)) == expected_pages()
    assert server.requests == ["evt_0010", "evt_0050", "evt_0110", "evt_0210", "evt_0310"]


def close_without_answer(handler: _Handler, _page: dict[str, Any]) -> None:
    handler.close_connection = True


def fail(status: int, headers: dict[str, str] | None = None) -> Callable[[_Handler, Any], None]:
    error = {"error": {"type": "api_error", "message": "try again"}}
    return lambda handler, _page: handler.reply(status, error, headers)


@pytest.mark.parametrize(
    "answer",
    [close_without_answer, fail(500), fail(429, {"Retry-After": "0"})],
    ids=["connection closed", "500", "429"],
)
def test_a_request_sent_ahead_that_fails_is_made_again(
    server: _Server, answer: Callable[[_Handler, Any], None]
) -> None:
    server.answers[2] = answer  # the first request sent ahead
    assert read_all(gateway_for(server)) == expected_pages()
    assert server.requests == ["evt_0010", "evt_0110", "evt_0110", "evt_0210", "evt_0310"]


def test_a_failure_made_again_fails_as_any_read_does(server: _Server) -> None:
    server.answers[2] = server.answers[3] = fail(500)
    pages = walk(gateway_for(server))
    next(pages)
    with pytest.raises(StripeGatewayError, match="try again"):
        next(pages)


def test_a_walk_left_early_does_not_leave_its_answer_to_the_next_read(server: _Server) -> None:
    """The connection that was left waiting for the next page is closed, not kept: the next
    read on the thread gets its own page."""
    gateway = gateway_for(server)
    pages = walk(gateway)
    assert next(pages).events[0].id == "evt_0110"
    pages.close()
    page = gateway.list_events(types=RELEVANT_TYPES, ending_before="evt_0300")
    assert [e.id for e in page.events] == list(reversed(EVENTS[300:350]))
    assert next(walk(gateway, anchor="evt_0340")).events[0].id == "evt_0350"


def test_a_walk_to_the_end_keeps_its_connection_for_the_next_read(server: _Server) -> None:
    gateway = gateway_for(server)
    read_all(gateway)
    gateway.list_events(types=RELEVANT_TYPES)
    assert server.connections == 1
