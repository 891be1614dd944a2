"""GET requests to Stripe through the SDK's HTTP client, answered as the response's bytes.

Reads share the `StripeClient`'s `stripe.HTTPXClient` (pool, timeouts, network retries,
`Stripe-Should-Retry`) but not its requestor, which parses every body into `OrderedDict`s
that the gateway would only decode again with msgspec: for an event page, the costliest part
of the read. What the requestor adds is written here: the three headers, Stripe's form
encoding, and an error answer turned into the SDK's error, so a failed read is handled
exactly as a failed SDK call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import msgspec
import stripe

from collab_billing.stripe_gateway.throttle import READS


class CountingHTTPClient(stripe.HTTPXClient):
    """The SDK's HTTP client, counting each GET it sends (`READS`), its own network retries
    included: Stripe's read allowance counts requests, not the calls that made them."""

    # HTTPXClient's own signature, which its base class types differently.
    def request(  # type: ignore[override]
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        if method.lower() == "get":
            READS.add()
        return super().request(method, url, headers, post_data)


class Reader:
    def __init__(
        self, http: stripe.HTTPClient, api_base: str, api_key: str, api_version: str, retries: int
    ) -> None:
        self.http = http
        self.api_base = api_base.rstrip("/")
        self.retries = retries
        self.headers = {
            "Authorization": f"Bearer {api_key}",
            "Stripe-Version": api_version,
            "User-Agent": f"Stripe/v1 PythonBindings/{stripe.VERSION} collab-billing",
        }

    def get(self, path: str, params: Mapping[str, Any]) -> bytes:
        """The JSON body of a 2xx answer; otherwise raises the SDK's error for the answer
        (`stripe.RateLimitError` for 429, with its headers), or `stripe.APIConnectionError`
        once the network retries are spent."""
        query = urlencode(list(form_pairs(params)))
        url = f"{self.api_base}{path}" + (f"?{query}" if query else "")
        content, status, headers = self.http.request_with_retries(
            "get", url, self.headers, max_network_retries=self.retries
        )
        body = content if isinstance(content, bytes) else content.encode()
        if not 200 <= status < 300:
            raise error_of(body, status, headers)
        return body


def form_pairs(params: Mapping[Any, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Stripe's form encoding (as the SDK's): `a[b]=` for a mapping, `a[0]=` for a list,
    booleans as `true`/`false`, None left out."""
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        key = f"{prefix}[{name}]" if prefix else str(name)
        if value is None:
            continue
        if isinstance(value, Mapping):
            pairs.extend(form_pairs(value, key))
        elif isinstance(value, list | tuple):
            pairs.extend(form_pairs(dict(enumerate(value)), key))
        elif isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        else:
            pairs.append((key, str(value)))
    return pairs


class _ErrorBody(msgspec.Struct):
    error: dict[str, Any]


def error_of(body: bytes, status: int, headers: Mapping[str, str]) -> stripe.StripeError:
    """The SDK's exception for an error answer: `RateLimitError` for 429 (the gateway waits
    its `Retry-After`), `APIError` otherwise; Stripe's `error` object rides along."""
    try:
        error: dict[str, Any] = msgspec.json.decode(body, type=_ErrorBody).error
    except msgspec.DecodeError:
        error = {}
    message = str(error.get("message") or f"HTTP {status}")
    json_body = {"error": error} if error else None
    kind = stripe.RateLimitError if status == 429 else stripe.APIError
    return kind(message, body.decode("utf-8", "replace"), status, json_body, dict(headers))
