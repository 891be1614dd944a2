"""`StripeGateway`: every call the service makes to Stripe, through one official `StripeClient`.

The SDK owns the HTTP (form encoding, `Stripe-Version`, network retries, timeouts, error
types). The gateway adds a client-side throttle shared by every thread, and retries 429s
after their `Retry-After`. Reads (`reads`) return the response's JSON bytes, decoded by the
caller into typed structs (`events`). Nothing outside this package sees an SDK type.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import msgspec
import stripe

from collab_billing.config import Settings
from collab_billing.stripe_gateway.errors import (
    DuplicateMeterEvent,
    StripeGatewayError,
    StripeNotConfigured,
    gateway_error,
    is_duplicate_identifier,
    retry_after_seconds,
)
from collab_billing.stripe_gateway.events import (
    EventPage,
    Ref,
    decode_event_page,
    decode_list_page,
    decode_object,
)
from collab_billing.stripe_gateway.reads import CountingHTTPClient, Reader
from collab_billing.stripe_gateway.throttle import Throttle

log = logging.getLogger(__name__)

# The API version of the published spec the emulator is checked against; pinned so that
# payload shapes (current_period_* on subscription items) do not move with SDK upgrades.
STRIPE_API_VERSION = "2026-08-26.dahlia"
RATE_LIMIT_RETRIES = 5
PAGE_EVENTS = 100  # the most a list page holds
T = TypeVar("T")
RequestObserver = Callable[[str, int | str], None]
SESSION_ID_PLACEHOLDER = "{CHECKOUT_SESSION_ID}"


class CheckoutSessionSummary(msgspec.Struct):
    """What `POST /billing/subscriptions/sync` needs of a Checkout session."""

    id: str
    status: str | None = None
    mode: str | None = None
    customer: str | Ref | None = None
    subscription: str | Ref | None = None
    client_reference_id: str | None = None
    metadata: dict[str, str] | None = None


class StripeGateway:
    def __init__(
        self,
        settings: Settings,
        observer: RequestObserver | None = None,
        requests_per_second: float | None = None,
        rate_limit_wait_seconds: float = math.inf,
    ) -> None:
        """`rate_limit_wait_seconds`: the most one call waits on Stripe's 429s in all (a
        request of the API is answered 503 with Stripe's `Retry-After` rather than wait)."""
        if settings.stripe_api_key is None:
            raise StripeNotConfigured("STRIPE_API_KEY is not set")
        self.settings = settings
        self.observer = observer
        rate = requests_per_second or settings.stripe_requests_per_second
        self.requests_per_second = rate
        self.rate_limit_wait_seconds = rate_limit_wait_seconds
        self.throttle = Throttle(rate, burst=max(1, int(rate // 5)))
        api_key = settings.stripe_api_key.get_secret_value()
        retries = settings.stripe_max_network_retries
        http = CountingHTTPClient(timeout=settings.stripe_timeout_seconds, allow_sync_methods=True)
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": settings.stripe_api_base.rstrip("/")},
            stripe_version=STRIPE_API_VERSION,
            max_network_retries=retries,
            http_client=http,
        )
        self.reader = Reader(http, settings.stripe_api_base, api_key, STRIPE_API_VERSION, retries)

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, operation: str, request: Callable[[], T]) -> T:
        """Throttle; retry 429s after `Retry-After` (the SDK retries only 409/5xx/network);
        turn SDK errors into `StripeGatewayError` carrying Stripe's error type and message."""
        waited = 0.0
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            self.throttle.wait()
            try:
                result = request()
            except stripe.RateLimitError as error:
                self._observe(operation, 429)
                pause = retry_after_seconds(error, attempt)
                if attempt == RATE_LIMIT_RETRIES or waited + pause > self.rate_limit_wait_seconds:
                    raise gateway_error(error) from None
                time.sleep(pause)
                waited += pause
                continue
            except stripe.StripeError as error:
                self._observe(operation, error.http_status or "network")
                raise gateway_error(error) from None
            self._observe(operation, 200)
            return result
        raise AssertionError("unreachable")

    def _observe(self, operation: str, outcome: int | str) -> None:
        if self.observer is not None:
            self.observer(operation, outcome)

    def get(self, operation: str, path: str, **params: Any) -> bytes:
        """GET `path` through the SDK's HTTP client (`reads`); the response's JSON as bytes.
        Each request sent counts as a read (`reads.CountingHTTPClient`)."""
        return self._call(operation, partial(self.reader.get, path, params))

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

    def create_checkout_session(
        self,
        *,
        customer_id: str,
        price_id: str,
        client_reference_id: str,
        github_user_id: int,
        quantity: int | None = 1,
        trial_days: int | None = None,
        usage_price_ids: Sequence[str] = (),
    ) -> str:
        """A subscription-mode Checkout session (`quantity` None: a metered price, which takes
        none), with an item for each of `usage_price_ids` (metered); with `trial_days`, a trial
        that takes no card unless BILLING_TRIAL_REQUIRES_PAYMENT_METHOD (card-less trials are
        canceled at their end if no card was added). Promotion codes and tax follow settings."""
        settings = self.settings
        metadata = {"github_user_id": str(github_user_id)}
        subscription_data: dict[str, Any] = {"metadata": metadata}
        # The session says whether it holds the customer's trial (`expire_open_checkouts`).
        session_metadata = {**metadata, **({"trial_days": str(trial_days)} if trial_days else {})}
        line_item: dict[str, Any] = {"price": price_id}
        if quantity is not None:
            line_item["quantity"] = quantity
        params: dict[str, Any] = {
            "mode": "subscription",
            "customer": customer_id,
            "line_items": [line_item, *({"price": price} for price in usage_price_ids)],
            "client_reference_id": client_reference_id,
            "success_url": with_session_id(settings.billing_checkout_success_url),
            "cancel_url": settings.billing_checkout_cancel_url,
            "metadata": session_metadata,
            "subscription_data": subscription_data,
        }
        if trial_days:
            subscription_data["trial_period_days"] = trial_days
            if not settings.billing_trial_requires_payment_method:
                params["payment_method_collection"] = "if_required"
                end = {"missing_payment_method": "cancel"}
                subscription_data["trial_settings"] = {"end_behavior": end}
        if settings.billing_allow_promotion_codes:
            params["allow_promotion_codes"] = True
        if settings.billing_automatic_tax:
            params["automatic_tax"] = {"enabled": True}
            params["billing_address_collection"] = "required"
            params["tax_id_collection"] = {"enabled": True}
            # Stripe requires these for an existing customer with tax and tax ids collected.
            params["customer_update"] = {"address": "auto", "name": "auto"}
        session = self._call(
            "checkout.sessions.create",
            lambda: self.client.v1.checkout.sessions.create(params=params),  # type: ignore[arg-type]
        )
        return str(session.url)

    def expire_open_checkouts(self, customer_id: str) -> list[CheckoutSessionSummary]:
        """Expire the customer's open subscription Checkout sessions. Returns those this call
        expired (`expired`) and those paid meanwhile (`complete`), which cannot be."""
        ended = []
        for raw in self.list_all("/v1/checkout/sessions", customer=customer_id, status="open"):
            session = decode_object(raw, CheckoutSessionSummary)
            if session.mode != "subscription":  # the host app's own payments are not ours
                continue
            expire = partial(self.client.v1.checkout.sessions.expire, session.id)
            try:
                self._call("checkout.sessions.expire", expire)
                session.status = "expired"
            except StripeGatewayError as error:
                if error.http_status != 400:  # 400: not open any more
                    raise
                session = self.retrieve_checkout_session(session.id)
                if session.status != "complete":  # expired by another request meanwhile
                    continue
            ended.append(session)
        return ended

    def create_portal_session(self, *, customer_id: str, flow: dict[str, Any] | None = None) -> str:
        """A customer portal session: its home page (no `flow`) or one flow (`flow_data`),
        coming back to BILLING_PORTAL_RETURN_URL."""
        return_url = self.settings.billing_portal_return_url
        params: dict[str, Any] = {"customer": customer_id, "return_url": return_url}
        if flow is not None:
            after = {"type": "redirect", "redirect": {"return_url": return_url}}
            params["flow_data"] = {**flow, "after_completion": after}
        session = self._call(
            "billing_portal.sessions.create",
            lambda: self.client.v1.billing_portal.sessions.create(params=params),  # type: ignore[arg-type]
        )
        return str(session.url)

    def update_subscription(self, subscription_id: str, **params: Any) -> bytes:
        """POST /v1/subscriptions/{id} (e.g. `cancel_at_period_end=False`, `trial_end="now"`);
        the updated subscription's JSON, for the caller to decode and apply."""
        response = self._call(
            "subscriptions.update",
            lambda: self.client.raw_request(
                "post", f"/v1/subscriptions/{subscription_id}", **params
            ),
        )
        return str(response.body).encode()

    def create_product(self, *, name: str) -> str:
        product = self._call(
            "products.create", lambda: self.client.v1.products.create(params={"name": name})
        )
        return str(product.id)

    def create_recurring_price(
        self,
        *,
        product_id: str,
        unit_amount: int,
        currency: str,
        interval: str,
        lookup_key: str | None = None,
    ) -> str:
        params: dict[str, Any] = {
            "product": product_id,
            "unit_amount": unit_amount,
            "currency": currency,
            "recurring": {"interval": interval},
        }
        if lookup_key is not None:
            params["lookup_key"] = lookup_key
            params["transfer_lookup_key"] = True  # the key names the newest price
        price = self._call(
            "prices.create",
            lambda: self.client.v1.prices.create(params=params),  # type: ignore[arg-type]
        )
        return str(price.id)

    # -- usage -----------------------------------------------------------------------------

    def create_meter_event(
        self, *, event_name: str, payload: dict[str, str], identifier: str, timestamp: int
    ) -> None:
        """Record one meter event. The `identifier` makes a repeat harmless: Stripe refuses it
        as a duplicate (`DuplicateMeterEvent`). No idempotency key of ours: docs/usage.md,
        "Exactly once at Stripe", says why."""
        params: dict[str, Any] = {
            "event_name": event_name,
            "payload": payload,
            "identifier": identifier,
            "timestamp": timestamp,
        }
        try:
            self._call(
                "billing.meter_events.create",
                lambda: self.client.v1.billing.meter_events.create(params=params),  # type: ignore[arg-type]
            )
        except StripeGatewayError as error:
            if is_duplicate_identifier(error):
                raise DuplicateMeterEvent(error.kind, error.message, error.http_status) from None
            raise

    def create_meter(self, *, event_name: str, display_name: str, formula: str = "sum") -> str:
        meter = self._call(
            "billing.meters.create",
            lambda: self.client.v1.billing.meters.create(
                params={
                    "event_name": event_name,
                    "display_name": display_name,
                    "default_aggregation": {"formula": formula},
                }
            ),
        )
        return str(meter.id)

    def create_metered_price(
        self, *, product_name: str, unit_amount_decimal: str, currency: str, meter_id: str,
        lookup_key: str | None = None,
    ) -> str:  # fmt: skip
        params: dict[str, Any] = {
            "product_data": {"name": product_name},
            "unit_amount_decimal": unit_amount_decimal,
            "currency": currency,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
        }
        if lookup_key:
            params["lookup_key"] = lookup_key
        price = self._call(
            "prices.create",
            lambda: self.client.v1.prices.create(params=params),  # type: ignore[arg-type]
        )
        return str(price.id)

    # -- reads -----------------------------------------------------------------------------

    def list_events(
        self,
        *,
        types: Sequence[str] | None,
        created_gte: int | None = None,
        created_lt: int | None = None,
        starting_after: str | None = None,
        limit: int = PAGE_EVENTS,
    ) -> EventPage:
        """One page of events, newest first; `starting_after` pages on to older ones. `types`
        None reads events of every type."""
        params: dict[str, Any] = {"limit": limit}
        if types is not None:
            params["types"] = list(types)
        created = {"gte": created_gte, "lt": created_lt}
        if any(value is not None for value in created.values()):
            params["created"] = {k: v for k, v in created.items() if v is not None}
        if starting_after:
            params["starting_after"] = starting_after
        return decode_event_page(self.get("events.list", "/v1/events", **params))

    def retrieve_checkout_session(self, session_id: str) -> CheckoutSessionSummary:
        """One Checkout session, nothing expanded; an unknown id raises `StripeGatewayError`
        with `http_status` 404."""
        body = self.get("checkout.sessions.retrieve", f"/v1/checkout/sessions/{session_id}")
        return decode_object(body, CheckoutSessionSummary)

    def list_customer_subscriptions(
        self, customer_id: str, expand: Sequence[str] = ()
    ) -> list[msgspec.Raw]:
        """Every subscription of a customer, canceled ones included, as their JSON (`expand`:
        the list's `expand[]`, e.g. `data.discounts`)."""
        params: dict[str, Any] = {"customer": customer_id, "status": "all"}
        if expand:
            params["expand"] = list(expand)
        return list(self.list_all("/v1/subscriptions", **params))

    def newest_event_created(self, types: Sequence[str] | None) -> int | None:
        """The `created` second of the newest event of `types` (None: of any type; None on an
        empty account): Stripe's clock, as far as what we read can tell."""
        page = self.list_events(types=types, limit=1)
        return page.events[0].created if page.events else None

    def list_all(self, path: str, **params: Any) -> Iterator[msgspec.Raw]:
        """Every object of a list endpoint, page by page with `starting_after`; each as its
        JSON, for the caller to decode."""
        operation = path.removeprefix("/v1/").replace("/", ".") + ".list"
        cursor: str | None = None
        while True:
            page_params = {**params, "limit": PAGE_EVENTS}
            if cursor:
                page_params["starting_after"] = cursor
            objects, has_more = decode_list_page(self.get(operation, path, **page_params))
            yield from objects
            if not has_more or not objects:
                return
            cursor = msgspec.json.decode(objects[-1], type=_Id).id


class _Id(msgspec.Struct):
    id: str


def with_session_id(success_url: str) -> str:
    """The success URL with `session_id={CHECKOUT_SESSION_ID}` (Stripe fills in the id), so
    the page the user returns to can call `POST /billing/subscriptions/sync` with it."""
    if SESSION_ID_PLACEHOLDER in success_url:
        return success_url
    separator = "&" if "?" in success_url else "?"
    return f"{success_url}{separator}session_id={SESSION_ID_PLACEHOLDER}"


def gateway_or_none(
    settings: Settings,
    observer: RequestObserver | None = None,
    rate_limit_wait_seconds: float = math.inf,
) -> StripeGateway | None:
    """The gateway, or None when STRIPE_API_KEY is not set."""
    if settings.stripe_api_key is None:
        return None
    return StripeGateway(settings, observer, rate_limit_wait_seconds=rate_limit_wait_seconds)
