"""Helpers for tests anywhere in the project.

from stripe_emulator.testing import running_emulator, stripe_client, control
with running_emulator() as emu:
    client = stripe_client(emu.url)
    customer = client.v1.customers.create(params={"email": "a@example.com"})
    control(emu.url, "POST", "/_emulator/clock/advance", {"seconds": 60})
"""

from __future__ import annotations

from typing import Any

import httpx
import stripe

from stripe_emulator.server import RunningEmulator, start_in_thread

DEFAULT_TEST_KEY = "sk_test_emulator"


def stripe_client(url: str, api_key: str = DEFAULT_TEST_KEY, **options: Any) -> stripe.StripeClient:
    """An official SDK client pointed at the emulator (no retries unless asked)."""
    options.setdefault("max_network_retries", 0)
    return stripe.StripeClient(api_key, base_addresses={"api": url}, **options)


def running_emulator(api_key: str | None = None) -> RunningEmulator:
    """A fresh emulator on a free port; use as a context manager."""
    return start_in_thread(port=0, api_key=api_key)


def control(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call a `/_emulator/...` control route; raises on an error status."""
    response = httpx.request(method, url.rstrip("/") + path, json=body, timeout=60)
    response.raise_for_status()
    return response.json()
