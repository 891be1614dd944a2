"""Fixtures for the emulator's own tests: one emulator (real HTTP, random port) per session,
reset before each test, driven by the official SDK.

Tests that take the `api` fixture use no control route, so they also run against real Stripe
test mode when STRIPE_LIVE_TEST_KEY is set (the `live` parameter, marked `stripe_live`).
"""

from __future__ import annotations

import calendar
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import stripe

from stripe_emulator.app import create_app
from stripe_emulator.server import RunningEmulator, start_in_thread
from stripe_emulator.testing import stripe_client

KEY = "sk_test_emulator_tests"
LIVE_KEY = os.environ.get("STRIPE_LIVE_TEST_KEY")


@pytest.fixture(scope="session")
def running() -> Iterator[RunningEmulator]:
    app = create_app(record_responses=True, webhook_retry_delays=(0.2, 0.2, 0.2))
    with start_in_thread(app=app) as emulator:
        yield emulator


class Control:
    """The emulator's `/_emulator` routes over HTTP."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.emulator = emulator
        self.url = emulator.url
        self.http = httpx.Client(base_url=emulator.url, timeout=60)

    def __call__(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"/_emulator/{path}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def raw(self, method: str, path: str, body: Any = None) -> httpx.Response:
        return self.http.request(method, f"/_emulator/{path}", json=body)

    def v1(self, method: str, path: str, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(method, f"/v1/{path}", headers=headers, **kwargs)


@pytest.fixture
def ctl(running: RunningEmulator) -> Iterator[Control]:
    control = Control(running)
    control("DELETE", "state")
    yield control
    control.http.close()


@pytest.fixture
def client(ctl: Control) -> stripe.StripeClient:
    return stripe_client(ctl.url, KEY)


@dataclass
class Api:
    client: stripe.StripeClient
    live: bool
    url: str = "https://api.stripe.com"


@pytest.fixture(params=["emulator", pytest.param("live", marks=pytest.mark.stripe_live)])
def api(request: pytest.FixtureRequest, running: RunningEmulator) -> Api:
    if request.param == "live":
        if not LIVE_KEY:
            pytest.skip("set STRIPE_LIVE_TEST_KEY=sk_test_... to run against Stripe test mode")
        return Api(stripe.StripeClient(LIVE_KEY, max_network_retries=2), True)
    control = Control(running)
    control("DELETE", "state")
    return Api(stripe_client(running.url, KEY), False, running.url)


# A new customer's card and default card (Stripe's test recipe: the same token for both): the
# first invoice of a subscription made for it through the API is paid, and it starts `active`.
CARD: dict[str, Any] = {
    "payment_method": "pm_card_visa",
    "invoice_settings": {"default_payment_method": "pm_card_visa"},
}


def recurring_price(
    client: stripe.StripeClient, amount: int = 2000, interval: str = "month", count: int = 1
) -> stripe.Price:
    return client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": amount,
            "recurring": {"interval": interval, "interval_count": count},  # type: ignore[typeddict-item]
            "product_data": {"name": "Emulator test plan"},
        }
    )


def months_later(at: int, months: int) -> int:
    """`at` (Unix, UTC) some calendar months later, the day clamped to the month's last: how
    Stripe counts monthly and yearly periods from the billing cycle anchor."""
    moment = datetime.fromtimestamp(at, UTC)
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return int(moment.replace(year=year, month=month + 1, day=day).timestamp())


def advance_to(ctl: Control, at: int) -> int:
    """Move the emulator's clock to `at` (or leave it, if it is there already); returns now."""
    now: int = ctl("GET", "clock")["now"]
    moved: int = ctl("POST", "clock/advance", {"seconds": max(at - now, 0)})["now"]
    return moved


def past_period_end(
    ctl: Control, client: stripe.StripeClient, sub_id: str, days: float = 0.1
) -> int:
    """Move the emulator's clock `days` past the subscription's current period end, as the
    emulator reports it (periods are calendar months: their length is not assumed)."""
    end = client.v1.subscriptions.retrieve(sub_id)["items"].data[0].current_period_end
    return advance_to(ctl, end + int(days * 86_400))
