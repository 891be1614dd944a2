"""`StripeGateway`: the service's calls to Stripe, as small typed functions.

Writes go through the official SDK's `StripeClient`; reads of objects and pages of events go
straight through `transport` (the SDK's parsing cost more than applying the events).
Everything else in the service gets plain dicts back (events as the typed structs of
`stripe_objects`), so that nothing outside this package depends on the SDK's object model.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import logging
import re
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import orjson
import stripe

from collab_billing.config import Settings
from collab_billing.stripe_gateway.errors import (
    RawError,
    StripeGatewayError,
    StripeNotConfigured,
    gateway_error,
)
from collab_billing.stripe_gateway.transport import (
    Connections,
    Throttle,
    connection_message,
    encode_params,
    error_of,
    network_backoff,
    retry_after_seconds,
    types_query,
)
from collab_billing.stripe_objects import DecodeError, Event, decode_event_list

log = logging.getLogger(__name__)

# The API version of the published spec the emulator is checked against; pinned so that
# payload shapes (current_period_* on subscription items) do not move with SDK upgrades.
STRIPE_API_VERSION = "2026-08-26.dahlia"
RATE_LIMIT_RETRIES = 5
StripeObjectDict = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    has_more: bool
    body: bytes | bytearray = field(default=b"", repr=False)  # its JSON (see `walk_process`)


RequestObserver = Callable[[str, int | str], None]


class StripeGateway:
    def __init__(
        self,
        settings: Settings,
        observer: RequestObserver | None = None,
        requests_per_second: float | None = None,
        throttle: Throttle | None = None,
    ) -> None:
        if settings.stripe_api_key is None:
            raise StripeNotConfigured("STRIPE_API_KEY is not set")
        self.settings = settings
        self.observer = observer
        rate = requests_per_second or settings.stripe_requests_per_second
        self.requests_per_second = rate
        self.throttle = throttle or Throttle(rate, burst=max(1, int(rate // 5)))
        self._api_key = settings.stripe_api_key.get_secret_value()
        # Direct GETs (the hot path: pages of events) go through `http.client`, not the SDK's
        # httpx (1.5 ms of CPU for a 270 KB page) nor urllib3 (see `Connections`); retries
        # are ours (below), as the SDK's. A connection per thread: up to 8 walks of the event
        # list and 4 reads at once (`reconcile.poll`).
        api_base = settings.stripe_api_base.rstrip("/")  # paths are appended with their "/"
        self._base_path = urlsplit(api_base).path
        self._http = Connections(
            api_base,
            settings.stripe_timeout_seconds,
            {
                "Authorization": f"Bearer {self._api_key}",
                "Stripe-Version": STRIPE_API_VERSION,
                "User-Agent": f"collab-billing Stripe/v1 PythonBindings/{stripe.VERSION}",
            },
        )
        self._api_base = api_base

    @functools.cached_property
    def client(self) -> stripe.StripeClient:
        """The SDK's client, for writes; made on first use (a process that only reads, as a
        walk's in `walk_process`, is spared its ~0.15 s of imports and TLS set-up)."""
        http_client = stripe.HTTPXClient(
            timeout=self.settings.stripe_timeout_seconds, allow_sync_methods=True
        )
        return stripe.StripeClient(
            self._api_key,
            base_addresses={"api": self._api_base},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=self.settings.stripe_max_network_retries,
            http_client=http_client,
        )

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, operation: str, request: Callable[[], T]) -> T:
        """Throttle, retry 429s after Retry-After (the SDK retries only 409/5xx/network), and
        turn SDK errors into `StripeGatewayError` carrying Stripe's error type only."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            self.throttle.wait()
            try:
                result = request()
            except stripe.RateLimitError as error:
                self._observe(operation, 429)
                if attempt == RATE_LIMIT_RETRIES:
                    raise gateway_error(error) from None
                time.sleep(retry_after_seconds(error.headers, attempt))
                continue
            except RawError as error:
                self._observe(operation, error.http_status or "network")
                if error.http_status == 429 and attempt < RATE_LIMIT_RETRIES:
                    time.sleep(retry_after_seconds(error.headers, attempt))
                    continue
                raise StripeGatewayError(error.kind, error.message, error.http_status) from None
            except stripe.StripeError as error:
                self._observe(operation, error.http_status or "network")
                raise gateway_error(error) from None
            self._observe(operation, 200)
            return result
        raise AssertionError("unreachable")

    def _observe(self, operation: str, outcome: int | str) -> None:
        if self.observer is not None:
            self.observer(operation, outcome)

    def _get_json(self, operation: str, path: str, params: dict[str, Any]) -> StripeObjectDict:
        """GET straight through `Connections` and parse once, into plain dicts."""
        parsed: StripeObjectDict = orjson.loads(self._get_url(operation, self._url(path, params)))
        return parsed

    def _url(self, path: str, params: dict[str, Any], encoded: str = "") -> str:
        url = self._base_path + path
        query = "&".join(filter(None, (encoded, urlencode(list(encode_params(params))))))
        return f"{url}?{query}" if query else url

    def _get_url(self, operation: str, url: str) -> bytes:
        """GET `url` (a path and query) straight through `Connections`, for the caller to parse
        as it needs. The reconciler's reads (pages of 100 events) are its hot path: the SDK
        parses every body into OrderedDicts (and StripeObjects on top), which cost more than
        the database work. Same headers, parameter encoding, retries and errors as the SDK's
        requests."""
        return self._call(operation, lambda: self._get_with_retries(url))

    def _get_with_retries(self, url: str) -> bytes:
        retries = self.settings.stripe_max_network_retries
        for attempt in range(retries + 1):
            try:
                status, headers, body = self._http.get(url)
            except (OSError, http.client.HTTPException) as error:
                if attempt < retries:
                    time.sleep(network_backoff(attempt))
                    continue
                message = connection_message(error)
                raise RawError(None, "api_connection_error", message, {}) from None
            if status < 300:
                return body
            should_retry = headers.get("stripe-should-retry")
            retryable = (status == 409 or status >= 500) and should_retry != "false"
            if should_retry == "true" and status != 429:
                retryable = True
            if retryable and attempt < retries:
                time.sleep(network_backoff(attempt))
                continue
            kind, message = error_of(status, body)
            raise RawError(status, kind, message, headers)
        raise AssertionError("unreachable")

    # -- customers, checkout, portal ---------------------------------------------------

    def create_customer(
        self, *, github_user_id: int, github_login: str, email: str | None, idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {
            "metadata": {"github_user_id": str(github_user_id), "github_login": github_login},
            "description": f"GitHub user {github_login}",
        }
        if email:
            params["email"] = email
        customer = self._call(
            "customers.create",
            lambda: self.client.v1.customers.create(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            ),
        )
        return str(customer.id)

    def retrieve_customer(self, customer_id: str) -> StripeObjectDict:
        return self._get_json("customers.retrieve", f"/v1/customers/{customer_id}", {})

    def create_checkout_session(
        self, *, customer_id: str, price_id: str, client_reference_id: str, github_user_id: int
    ) -> str:
        params: dict[str, Any] = {
            "mode": "subscription",
            "customer": customer_id,
            "line_items": [{"price": price_id, "quantity": 1}],
            "client_reference_id": client_reference_id,
            "success_url": self.settings.billing_checkout_success_url,
            "cancel_url": self.settings.billing_checkout_cancel_url,
            "metadata": {"github_user_id": str(github_user_id)},
            "subscription_data": {"metadata": {"github_user_id": str(github_user_id)}},
        }
        session = self._call(
            "checkout.sessions.create",
            lambda: self.client.v1.checkout.sessions.create(params=params),  # type: ignore[arg-type]
        )
        return str(session.url)

    def create_portal_cancel_session(self, *, customer_id: str, subscription_id: str) -> str:
        return_url = self.settings.billing_portal_return_url
        params: dict[str, Any] = {
            "customer": customer_id,
            "return_url": return_url,
            "flow_data": {
                "type": "subscription_cancel",
                "subscription_cancel": {"subscription": subscription_id},
                "after_completion": {"type": "redirect", "redirect": {"return_url": return_url}},
            },
        }
        session = self._call(
            "billing_portal.sessions.create",
            lambda: self.client.v1.billing_portal.sessions.create(params=params),  # type: ignore[arg-type]
        )
        return str(session.url)

    def create_recurring_price(
        self, *, product_name: str, unit_amount: int, currency: str, interval: str
    ) -> str:
        product = self._call(
            "products.create",
            lambda: self.client.v1.products.create(params={"name": product_name}),
        )
        price = self._call(
            "prices.create",
            lambda: self.client.v1.prices.create(
                params={
                    "product": product.id,
                    "unit_amount": unit_amount,
                    "currency": currency,
                    "recurring": {"interval": interval},
                }
            ),
        )
        return str(price.id)

    # -- subscriptions and events ------------------------------------------------------

    def retrieve_subscription(self, subscription_id: str) -> StripeObjectDict:
        return self._get_json("subscriptions.retrieve", f"/v1/subscriptions/{subscription_id}", {})

    def list_events(
        self,
        *,
        types: Sequence[str],
        created_gte: int | None = None,
        created_lt: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
        limit: int = 100,
    ) -> EventPage:
        """One page, newest first. `starting_after` pages on to older events;
        `ending_before` to the page of newer events just above that one."""
        filters = _created(created_gte, created_lt)
        cursor = {"starting_after": starting_after, "ending_before": ending_before}
        url = self._events_url(types, filters, cursor, limit)
        return _event_page(self._get_url("events.list", url))

    def walk_events(
        self,
        *,
        types: Sequence[str],
        ending_before: str,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> Generator[EventPage, None, None]:
        """Every page above `ending_before`, each the page just above the one before (as
        `list_events(ending_before=page.events[0].id)` reads them), until Stripe has no more.

        The request for the next page is sent before this page is decoded and handed over,
        so that Stripe (or the emulator, on this machine's other core) makes the next page
        while this one is decoded and applied: a backlog's walk is a chain of requests, each
        waiting for the one before. Its cursor is read off the body's first bytes (Stripe
        writes an event's id first); the decoded page confirms it, and a wrong guess costs
        the request made for it. A request sent ahead that fails is made again the usual way
        (with its retries and errors)."""
        filters = _created(created_gte, created_lt)
        connection = self._http.lend()
        anchor = ending_before
        sent: str | None = None  # the cursor of the request awaiting its response
        try:
            while True:
                if sent is not None and sent != anchor:
                    self._discard(connection)  # a wrong guess: not the page that comes next
                    sent = None
                if sent is None:
                    sent = self._send_ahead(connection, types, filters, anchor)
                body = self._received(connection) if sent is not None else None
                sent = None
                if body is None:
                    url = self._events_url(types, filters, {"ending_before": anchor})
                    body = self._get_url("events.list", url)
                if (guess := _next_anchor(body)) is not None:
                    sent = self._send_ahead(connection, types, filters, guess)
                page = _event_page(body)
                yield page
                if not page.has_more or not page.events:
                    return
                anchor = page.events[0].id
        finally:
            self._http.give_back(connection, awaiting=sent is not None)

    def _events_url(
        self,
        types: Sequence[str],
        filters: dict[str, int | None],
        cursor: dict[str, str | None],
        limit: int = 100,
    ) -> str:
        params: dict[str, Any] = {"limit": limit}
        params.update((name, value) for name, value in filters.items() if value is not None)
        params.update((name, value) for name, value in cursor.items() if value)
        return self._url("/v1/events", params, types_query(tuple(types)))

    def _send_ahead(
        self,
        connection: http.client.HTTPConnection,
        types: Sequence[str],
        filters: dict[str, int | None],
        anchor: str,
    ) -> str | None:
        """`anchor` if the request for the page above it went out on `connection`."""
        self.throttle.wait()
        url = self._events_url(types, filters, {"ending_before": anchor})
        try:
            self._http.send(connection, url)
        except (OSError, http.client.HTTPException):
            return None
        return anchor

    def _received(self, connection: http.client.HTTPConnection) -> bytes | None:
        """The body answering the request sent ahead, or None if it is to be made again."""
        try:
            status, headers, body = self._http.receive(connection)
        except (OSError, http.client.HTTPException):
            return None
        self._observe("events.list", status)
        if status == 429:
            time.sleep(retry_after_seconds(headers, 0))
        return body if status < 300 else None

    def _discard(self, connection: http.client.HTTPConnection) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            self._observe("events.list", self._http.receive(connection)[0])

    def iterate_list(self, path: str, params: dict[str, Any]) -> Iterator[StripeObjectDict]:
        """Walk a list endpoint page by page with `starting_after`."""
        cursor: str | None = None
        operation = path.strip("/").replace("v1/", "").replace("/", ".") + ".list"
        while True:
            page_params = {**params, "limit": 100}
            if cursor:
                page_params["starting_after"] = cursor
            page = self._get_json(operation, path, page_params)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            cursor = page["data"][-1]["id"]


def _created(gte: int | None, lt: int | None) -> dict[str, int | None]:
    return {"created[gte]": gte, "created[lt]": lt}


def _event_page(body: bytes) -> EventPage:
    try:
        page = decode_event_list(body)
    except DecodeError as error:  # names the field (`$.data[3].created`), never a value
        raise StripeGatewayError("api_error", f"unexpected event list: {error}", 200) from None
    return EventPage(events=page.data, has_more=page.has_more, body=body)


_FIRST_ID = re.compile(rb'"data"\s*:\s*\[\s*\{\s*"id"\s*:\s*"([A-Za-z0-9_]+)"')
_HAS_MORE = re.compile(rb'"has_more"\s*:\s*true')


def _next_anchor(body: bytes) -> str | None:
    """The id of a page's newest event, if its body says at a glance that there are more:
    a guess (JSON's keys have no order), which the decoded page confirms."""
    first = _FIRST_ID.search(body, 0, 2_000)
    if first is None or _HAS_MORE.match(body, body.rfind(b'"has_more"')) is None:
        return None
    return first.group(1).decode("ascii")


def gateway_or_none(
    settings: Settings, observer: RequestObserver | None = None
) -> StripeGateway | None:
    """The gateway, or None when STRIPE_API_KEY is not set."""
    if settings.stripe_api_key is None:
        return None
    return StripeGateway(settings, observer=observer)
