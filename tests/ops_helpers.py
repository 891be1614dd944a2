"""Helpers of the webhook, operations and resync tests: a running service, Stripe's signature
scheme (computed here, independently of the SDK), and a user's billing lifecycle."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.db.models import PendingStripeEvent
from collab_billing.mirror.registry import MIRROR_FORMAT, RELEVANT_TYPES
from collab_billing.reconcile import ledger
from collab_billing.state.access import system_clock
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerThread
from tests.stripe_helpers import EMULATOR_KEY, Emulator

WHSEC_OLD = "whsec_old_5cd0e4a1b7f24c3e9a0d"
WHSEC_NEW = "whsec_new_8e21f7c09b3a4d6f8c17"


def service_env(database_url: str, emulator: Emulator, log_format: str = "json") -> dict[str, str]:
    """The environment of a `collab-billing` subprocess against `emulator`."""
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "STRIPE_API_KEY": EMULATOR_KEY,
        "STRIPE_API_BASE": emulator.url,
        "STRIPE_WEBHOOK_SECRET": WHSEC_NEW,
        "STRIPE_REQUESTS_PER_SECOND": "1000",
        "RECONCILE_INTERVAL_SECONDS": "0.2",
        "RECONCILE_SAFETY_INTERVAL_SECONDS": "1",
        "LOG_FORMAT": log_format,
    }


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """`Stripe-Signature` as Stripe computes it: v1 = HMAC-SHA256(secret, f"{t}.{payload}")."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={v1(payload, secret, t)}"


def v1(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


@dataclass
class Service:
    url: str
    api: httpx.Client  # with the admin token
    settings: Settings
    factory: sessionmaker[Session]

    def deliver(self, event: dict[str, Any], secret: str = WHSEC_NEW) -> httpx.Response:
        payload = json.dumps(event).encode()
        return self.post_webhook(payload, sign(payload, secret))

    def post_webhook(self, payload: bytes, signature: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        return httpx.post(
            f"{self.url}/stripe/webhooks", content=payload, headers=headers, timeout=30
        )


@contextmanager
def running_service(
    stripe_settings: Settings,
    engine: Engine,
    clock: Callable[[], datetime] | None = None,
    **updates: Any,
) -> Iterator[Service]:
    """The real app under uvicorn (on `clock`: the system's by default); webhooks on with two
    secrets (rotation), reconciler off unless `reconcile_enabled=True` is given."""
    updates.setdefault("stripe_webhook_secret", SecretStr(f"{WHSEC_OLD},{WHSEC_NEW}"))
    updates.setdefault("reconcile_enabled", False)
    settings = stripe_settings.model_copy(update=updates)
    app = create_app(settings, engine, clock=clock or system_clock)
    with ServerThread(app) as server:
        api = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30
        )
        try:
            yield Service(server.url, api, settings, make_session_factory(engine))
        finally:
            api.close()


def subscribe(service: Service, emulator: Emulator, github_user_id: int) -> str:
    """A user checks out through the service's API; returns the Stripe subscription id."""
    login = f"user{github_user_id}"
    user = {
        "github_user_id": github_user_id,
        "github_login": login,
        "email_address": f"{login}@example.com",
    }
    assert service.api.post("/users", json=user).is_success
    response = service.api.post("/billing/subscriptions", json={"github_user_id": github_user_id})
    assert response.status_code == 200, response.text
    session = emulator.complete_checkout(response.json()["checkout_session_url"])
    return str(session["subscription"])


def churn(emulator: Emulator, subscription_id: str) -> None:
    """Many changes to one subscription, most within the same second (ties on `created`)."""
    for status in ("past_due", "active", "unpaid", "active"):
        emulator.set_status(subscription_id, status)
    for flag in (True, False, True):
        emulator.sdk.v1.subscriptions.update(subscription_id, {"cancel_at_period_end": flag})


def relevant_events(emulator: Emulator) -> list[dict[str, Any]]:
    """The emulator's events the service listens to, oldest first."""
    return [e for e in reversed(emulator.all_events()) if e["type"] in RELEVANT_TYPES]


def wait_until(check: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def delivered_ok(emulator: Emulator) -> set[str]:
    """Ids of the events the emulator delivered with a 2xx answer."""
    attempts = emulator.control("GET", "webhook_deliveries")["data"]
    return {a["event_id"] for a in attempts if a["status"] and 200 <= a["status"] < 300}


def pending_rows(factory: sessionmaker[Session]) -> list[PendingStripeEvent]:
    with factory() as session:
        return list(session.scalars(select(PendingStripeEvent)))


def set_synced(factory: sessionmaker[Session], cursor: int) -> None:
    """As if the service had polled completely just now, with the cursor at `cursor`."""
    with factory() as session, session.begin():
        ledger.write_state(session, ledger.CURSOR, cursor)
        ledger.write_state(session, ledger.LAST_DRAIN_AT, int(time.time()))
        ledger.write_state(session, ledger.MIRROR_FORMAT, MIRROR_FORMAT)


def terminate(process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then the exit code (the service should exit 0 after its current work)."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout)


def reap(process: subprocess.Popen[Any]) -> None:
    """Leave nothing running, whatever the test did."""
    if process.poll() is None:
        process.kill()
        process.wait()


def close_database(database_url: str, allow: bool) -> None:
    url = make_url(database_url)
    admin = make_engine(
        url.set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(
            text(f"ALTER DATABASE {url.database} WITH ALLOW_CONNECTIONS {str(allow).lower()}")
        )
        if not allow:
            connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": url.database},
            )
    admin.dispose()
