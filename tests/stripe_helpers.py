"""Test helpers around the emulator: its control routes and the official SDK."""

from __future__ import annotations

import re
from typing import Any

import httpx
import stripe

EMULATOR_KEY = "sk_test_collab_billing_tests"


class Emulator:
    """The running emulator, driven over HTTP: control routes and the SDK."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)
        self.sdk = stripe.StripeClient(
            EMULATOR_KEY, base_addresses={"api": url}, max_network_retries=0
        )

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def reset(self) -> None:
        self.control("DELETE", "state")
        self.control("DELETE", "faults")
        self.control("DELETE", "rate_limit")

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self.control("GET", "state")
        return result

    def complete_checkout(self, checkout_url: str) -> dict[str, Any]:
        session_id = session_id_in(checkout_url, "cs_")
        result: dict[str, Any] = self.control(
            "POST", f"checkout/sessions/{session_id}/complete", {}
        )
        return result

    def confirm_portal(self, portal_url: str, immediately: bool = False) -> dict[str, Any]:
        session_id = session_id_in(portal_url, "bps_")
        result: dict[str, Any] = self.control(
            "POST", f"billing_portal/sessions/{session_id}/confirm", {"immediately": immediately}
        )
        return result

    def subscribe_in_stripe(self, github_user_id: int, *price_ids: str) -> Any:
        """A customer naming the user, with a card, subscribed to these prices in Stripe
        (not through the service): the subscription."""
        metadata = {"github_user_id": str(github_user_id)}
        customer = self.sdk.v1.customers.create(params={"metadata": metadata})
        card = self.sdk.v1.payment_methods.attach("pm_card_visa", {"customer": customer.id})
        items = [{"price": price} for price in price_ids]
        return self.sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": items, "default_payment_method": card.id}
        )

    def now(self) -> int:
        """The emulator's clock (objects on no test clock follow it)."""
        now: int = self.control("GET", "clock")["now"]
        return now

    def advance_to(self, at: int) -> int:
        """Move the emulator's clock to `at` (or leave it, if it is there already)."""
        moved = self.control("POST", "clock/advance", {"seconds": max(at - self.now(), 0)})
        return int(moved["now"])

    def past_period_end(self, subscription_id: str, seconds: int) -> int:
        """Move the emulator's clock `seconds` past the subscription's current period end, as
        Stripe reports it (periods are calendar months: their length is not assumed); returns
        that period end (the renewal)."""
        sub = self.sdk.v1.subscriptions.retrieve(subscription_id)
        end: int = sub["items"].data[0].current_period_end
        self.advance_to(end + seconds)
        return end

    def set_status(self, subscription_id: str, status: str) -> None:
        self.control("POST", f"subscriptions/{subscription_id}/status", {"status": status})

    def price(self) -> str:
        product = self.sdk.v1.products.create(params={"name": "Collab Pro"})
        price = self.sdk.v1.prices.create(
            params={
                "product": product.id,
                "unit_amount": 2000,
                "currency": "usd",
                "recurring": {"interval": "month"},
            }
        )
        return str(price.id)

    def all_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        starting_after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 100}
            if starting_after:
                params["starting_after"] = starting_after
            page = self.http.get(
                "/v1/events", params=params, headers={"Authorization": f"Bearer {EMULATOR_KEY}"}
            ).json()
            events.extend(page["data"])
            if not page["has_more"]:
                return events
            starting_after = page["data"][-1]["id"]


def session_id_in(url: str, prefix: str) -> str:
    match = re.search(rf"({prefix}[A-Za-z0-9_]+)", url)
    assert match, f"no {prefix} id in {url}"
    return match.group(1)
