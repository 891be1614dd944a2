"""The one module that talks to Stripe, through the official SDK's `StripeClient`.

Everything else in the service calls these small typed functions and gets plain dicts back,
so that nothing outside this module depends on the SDK's object model.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import stripe

from collab_billing.config import Settings

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
    events: list[StripeObjectDict]
    has_more: bool


RequestObserver = Callable[[str, int | str], None]


class _Throttle:
    """A minimal token bucket: at most `rate` requests per second across threads."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next_slot = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


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
        self.throttle = _Throttle(requests_per_second or settings.stripe_requests_per_second)
        http_client = stripe.HTTPXClient(
            timeout=settings.stripe_timeout_seconds, allow_sync_methods=True
        )
        self.client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses={"api": settings.stripe_api_base},
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
                time.sleep(_retry_after_seconds(error, attempt))
                continue
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
        """GET through the SDK's raw request and parse once: building StripeObjects for
        every nested field of 100 events costs more than the reconciler's database work."""

        def request() -> StripeObjectDict:
            response = self.client.raw_request("get", path, **params)
            parsed: StripeObjectDict = json.loads(response.body)
            return parsed

        return self._call(operation, request)

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
        limit: int = 100,
    ) -> EventPage:
        params: dict[str, Any] = {"limit": limit, "types": list(types)}
        created: dict[str, int] = {}
        if created_gte is not None:
            created["gte"] = created_gte
        if created_lt is not None:
            created["lt"] = created_lt
        if created:
            params["created"] = created
        if starting_after:
            params["starting_after"] = starting_after
        page = self._get_json("events.list", "/v1/events", params)
        return EventPage(events=page["data"], has_more=bool(page["has_more"]))

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


def _retry_after_seconds(error: stripe.StripeError, attempt: int) -> float:
    backoff = min(0.5 * 2.0**attempt, 30.0)
    headers: dict[str, str] = {k.lower(): str(v) for k, v in (error.headers or {}).items()}
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
