"""The one module that talks to Stripe, through the official SDK's `StripeClient`.

Everything else in the service calls these small typed functions and gets plain dicts back
(events as the typed structs of `stripe_objects`), so that nothing outside this module depends
on the SDK's object model.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import orjson
import stripe

from collab_billing.config import Settings
from collab_billing.stripe_objects import DecodeError, Event, decode_event_list

log = logging.getLogger(__name__)

# The API version of the published spec the emulator is checked against; pinned so that
# payload shapes (current_period_* on subscription items) do not move with SDK upgrades.
STRIPE_API_VERSION = "2026-08-26.dahlia"
RATE_LIMIT_RETRIES = 5
StripeObjectDict = dict[str, Any]
T = TypeVar("T")


class StripeNotConfigured(Exception):
    """No API key (or no price): the route answers 503."""


class StripeGatewayError(Exception):
    """Stripe failed or refused; `kind` is Stripe's error type, never a secret."""

    def __init__(self, kind: str, message: str, http_status: int | None) -> None:
        super().__init__(f"Stripe {kind}: {message}")
        self.kind = kind
        self.http_status = http_status


@dataclass(frozen=True)
class EventPage:
    events: list[Event]
    has_more: bool


RequestObserver = Callable[[str, int | str], None]


class _Throttle:
    """A token bucket across threads: at most `rate` requests a second on average, with bursts
    of `burst`. A small burst lets a request that came late (a slow page, a busy GIL) be made
    up for at once, so that a sequential reader keeps the full rate; kept well under a
    second's worth so that Stripe's own bucket is never emptied by us alone."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.slack = (burst - 1) * self.interval
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now - self.slack, self.next_slot)
            self.next_slot = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _Connections:
    """GETs to Stripe's host on one kept-alive `http.client` connection per thread.

    Not urllib3's pool, on purpose: a drain reads ~10 pages of events a second per 1,000
    events/s, each on the thread that takes turns on the GIL with the applying one, and
    urllib3's layers over `http.client` (the target re-encoded byte by byte, the pool, its
    response object) cost ~0.3 ms of CPU a page, ~3 µs an event (`bench.stages`). What they
    gave us that we need is done here: a connection the server closed while it was kept
    alive is replaced and the request made again, once; every other failure is the caller's
    (retried with backoff like the SDK's)."""

    def __init__(self, api_base: str, timeout: float, headers: dict[str, str]) -> None:
        parts = urlsplit(api_base)
        secure = parts.scheme == "https"
        self._connection_class = (
            http.client.HTTPSConnection if secure else http.client.HTTPConnection
        )
        self._host = parts.hostname or ""
        self._port = parts.port
        self._timeout = timeout
        self._headers = headers
        self._local = threading.local()

    def get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of `GET url` (a path and query)."""
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        kept = connection is not None
        if connection is None:
            connection = self._connection_class(self._host, self._port, timeout=self._timeout)
        self._local.connection = None  # until this request has succeeded
        try:
            connection.request("GET", url, headers=self._headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            if kept and not isinstance(error, TimeoutError):
                return self.get(url)  # the server closed it while it was kept: a new one
            raise
        if response.will_close:
            connection.close()
        else:
            self._local.connection = connection
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, body


class StripeGateway:
    def __init__(
        self,
        settings: Settings,
        observer: RequestObserver | None = None,
        requests_per_second: float | None = None,
    ) -> None:
        if settings.stripe_api_key is None:
            raise StripeNotConfigured("STRIPE_API_KEY is not set")
        self.settings = settings
        self.observer = observer
        rate = requests_per_second or settings.stripe_requests_per_second
        self.requests_per_second = rate
        self.throttle = _Throttle(rate, burst=max(1, int(rate // 5)))
        self._api_key = settings.stripe_api_key.get_secret_value()
        # Direct GETs (the hot path: pages of events) go through `http.client`, not the SDK's
        # httpx (1.5 ms of CPU for a 270 KB page) nor urllib3 (see `_Connections`); retries
        # are ours (below), as the SDK's. A connection per thread: up to 8 walks of the event
        # list and 4 reads at once (`reconcile.poll`).
        api_base = settings.stripe_api_base.rstrip("/")  # paths are appended with their "/"
        self._base_path = urlsplit(api_base).path
        self._http = _Connections(
            api_base,
            settings.stripe_timeout_seconds,
            {
                "Authorization": f"Bearer {self._api_key}",
                "Stripe-Version": STRIPE_API_VERSION,
                "User-Agent": f"collab-billing Stripe/v1 PythonBindings/{stripe.VERSION}",
            },
        )
        http_client = stripe.HTTPXClient(
            timeout=settings.stripe_timeout_seconds, allow_sync_methods=True
        )
        self.client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses={"api": api_base},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=settings.stripe_max_network_retries,
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
                    raise _gateway_error(error) from None
                time.sleep(_retry_after_seconds(error.headers, attempt))
                continue
            except _RawError as error:
                self._observe(operation, error.http_status or "network")
                if error.http_status == 429 and attempt < RATE_LIMIT_RETRIES:
                    time.sleep(_retry_after_seconds(error.headers, attempt))
                    continue
                raise StripeGatewayError(error.kind, error.message, error.http_status) from None
            except stripe.StripeError as error:
                self._observe(operation, error.http_status or "network")
                raise _gateway_error(error) from None
            self._observe(operation, 200)
            return result
        raise AssertionError("unreachable")

    def _observe(self, operation: str, outcome: int | str) -> None:
        if self.observer is not None:
            self.observer(operation, outcome)

    def _get_json(self, operation: str, path: str, params: dict[str, Any]) -> StripeObjectDict:
        """GET straight through `_Connections` and parse once, into plain dicts."""
        parsed: StripeObjectDict = orjson.loads(self._get_body(operation, path, params))
        return parsed

    def _get_body(
        self, operation: str, path: str, params: dict[str, Any], encoded: str = ""
    ) -> bytes:
        """GET straight through `_Connections`, for the caller to parse as it needs; `encoded` is
        more of the query, encoded already.

        The reconciler's reads (pages of 100 events) are its hot path: the SDK parses every
        body into OrderedDicts (and StripeObjects on top), which cost more than the database
        work. Same headers, parameter encoding, retries and errors as the SDK's requests."""
        url = self._base_path + path
        query = "&".join(filter(None, (encoded, urlencode(list(_encode_params(params))))))
        if query:
            url = f"{url}?{query}"

        def request() -> bytes:
            return self._get_with_retries(url)

        return self._call(operation, request)

    def _get_with_retries(self, url: str) -> bytes:
        retries = self.settings.stripe_max_network_retries
        for attempt in range(retries + 1):
            try:
                status, headers, body = self._http.get(url)
            except (OSError, http.client.HTTPException) as error:
                if attempt < retries:
                    time.sleep(_network_backoff(attempt))
                    continue
                message = _connection_message(error)
                raise _RawError(None, "api_connection_error", message, {}) from None
            if status < 300:
                return body
            should_retry = headers.get("stripe-should-retry")
            retryable = (status == 409 or status >= 500) and should_retry != "false"
            if should_retry == "true" and status != 429:
                retryable = True
            if retryable and attempt < retries:
                time.sleep(_network_backoff(attempt))
                continue
            kind, message = _error_of(status, body)
            raise _RawError(status, kind, message, headers)
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
        params: dict[str, Any] = {"limit": limit}
        created: dict[str, int] = {}
        if created_gte is not None:
            created["gte"] = created_gte
        if created_lt is not None:
            created["lt"] = created_lt
        if created:
            params["created"] = created
        if starting_after:
            params["starting_after"] = starting_after
        if ending_before:
            params["ending_before"] = ending_before
        body = self._get_body("events.list", "/v1/events", params, _types_query(tuple(types)))
        try:
            page = decode_event_list(body)
        except DecodeError as error:  # names the field (`$.data[3].created`), never a value
            raise StripeGatewayError("api_error", f"unexpected event list: {error}", 200) from None
        return EventPage(events=page.data, has_more=page.has_more)

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


class _RawError(Exception):
    """A failed GET of the direct path; `_call` turns it into a StripeGatewayError."""

    def __init__(
        self, http_status: int | None, kind: str, message: str, headers: dict[str, str]
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.http_status = http_status
        self.kind = kind
        self.message = message
        self.headers = headers


def gateway_or_none(
    settings: Settings, observer: RequestObserver | None = None
) -> StripeGateway | None:
    """The gateway, or None when STRIPE_API_KEY is not set."""
    if settings.stripe_api_key is None:
        return None
    return StripeGateway(settings, observer=observer)


@functools.lru_cache(maxsize=16)
def _types_query(types: tuple[str, ...]) -> str:
    """`types[0]=..&types[1]=..`: the same at every page of a drain, encoded once."""
    return urlencode(list(_encode_params({"types": list(types)})))


def _encode_params(params: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Stripe's form encoding, as the SDK does it: `a[b]=..`, lists as `a[0]=..`."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, dict):
            yield from _encode_params(value, name)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _encode_params(item, f"{name}[{index}]")
                else:
                    yield f"{name}[{index}]", _form_value(item)
        else:
            yield name, _form_value(value)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _network_backoff(attempt: int) -> float:
    """The SDK's schedule: 0.5 s doubling up to 5 s, with jitter."""
    delay = min(0.5 * 2.0**attempt, 5.0)
    return max(0.5, delay * (0.5 + random.random() / 2))


def _error_of(status: int, body: bytes) -> tuple[str, str]:
    """Stripe's error type and message from an error body (like the SDK's error classes)."""
    try:
        error = json.loads(body)["error"]
        return str(error.get("type") or "api_error"), str(error.get("message") or "no message")
    except (ValueError, KeyError, TypeError, AttributeError):
        kind = "api_error" if status >= 500 else "invalid_request_error"
        return kind, f"HTTP {status} with a body that is not Stripe's"


def _connection_message(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "Request to Stripe timed out"
    return f"Unexpected error communicating with Stripe ({type(error).__name__})"


def _retry_after_seconds(raw_headers: Any, attempt: int) -> float:
    backoff = min(0.5 * 2.0**attempt, 30.0)
    headers: dict[str, str] = {k.lower(): str(v) for k, v in (raw_headers or {}).items()}
    try:
        delay = float(headers["retry-after"])
    except (KeyError, ValueError):
        return backoff
    return min(delay, 60.0)


def _gateway_error(error: stripe.StripeError) -> StripeGatewayError:
    kind = "api_connection_error"
    if error.error is not None and error.error.type:
        kind = str(error.error.type)
    elif not isinstance(error, stripe.APIConnectionError):
        kind = type(error).__name__
    # The SDK's message never contains the key; we still keep only Stripe's own message.
    message = error.user_message or "no message"
    return StripeGatewayError(kind, str(message), error.http_status)


class SignatureError(Exception):
    """A webhook's `Stripe-Signature` does not verify (wrong secret, stale, malformed)."""


WEBHOOK_TOLERANCE_SECONDS = 300


def verify_webhook(payload: bytes, signature_header: str, secrets: list[str]) -> None:
    """Verify with the SDK's verifier against each secret (rotation: old and new accepted)."""
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(
                payload.decode("utf-8"), signature_header, secret, WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            last_error = str(error)
            continue
        return
    raise SignatureError(last_error)
