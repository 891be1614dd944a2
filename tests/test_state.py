"""The state document: `GET /billing/state`, and one outbox row per change of it, written in
the transaction of the change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.models import BillingNotification
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_billing_api import serve
from tests.test_reconcile_flow import add_user, checkout


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve(stripe_settings, engine)


def notifications(factory: sessionmaker[Session]) -> list[dict[str, Any]]:
    with factory() as session:
        rows = session.scalars(select(BillingNotification).order_by(BillingNotification.id))
        return [row.payload for row in rows]


def test_checkout_and_cancel_change_the_document_and_its_version(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, api: httpx.Client
) -> None:
    factory = reconciler.factory
    add_user(factory, 4242, "octocat")
    reconciler.drain()
    before = api.get("/billing/state", params={"github_user_id": 4242}).json()
    assert before == {
        "github_user_id": 4242,
        "version": 0,
        "access": {"state": "none", "until": None},
        "plan": None,
        "quantity": None,
        "trial_end": None,
        "features": [],
        "usage": {"max_monthly_spend_cents": None, "over_spend_cap": False},
    }
    price = stripe_settings.stripe_price_id or ""
    emulator.complete_checkout(checkout(reconciler, price, 4242))
    reconciler.drain()

    state = api.get("/billing/state", params={"github_user_id": 4242}).json()
    assert state["access"] == {"state": "active", "until": None}
    assert state["plan"]["stripe_price_id"] == price
    assert state["plan"]["product_name"] == "Collab Pro"
    assert state["version"] >= 1
    sent = notifications(factory)
    assert sent[-1] == state  # the notification carries the document as the API shows it

    subscription = state["plan"]["stripe_subscription_id"]
    emulator.sdk.v1.subscriptions.cancel(subscription)
    reconciler.drain()
    after = api.get("/billing/state", params={"github_user_id": 4242}).json()
    assert after["access"]["state"] == "none"
    assert after["plan"] is None
    assert after["version"] > state["version"]
    sent = notifications(factory)
    versions = [payload["version"] for payload in sent]
    assert versions == list(range(1, len(sent) + 1))  # one per change, no gaps, no repeats
    assert sent[-1] == after

    # Nothing changed: neither a poll nor a full resync writes a notification.
    reconciler.drain()
    resync(factory, reconciler.gateway)
    assert len(notifications(factory)) == len(sent)


def test_a_product_rename_notifies_its_subscribers(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, api: httpx.Client
) -> None:
    factory = reconciler.factory
    add_user(factory, 7, "seven")
    reconciler.drain()
    price = stripe_settings.stripe_price_id or ""
    emulator.complete_checkout(checkout(reconciler, price, 7))
    reconciler.drain()
    count = len(notifications(factory))
    product = emulator.sdk.v1.prices.retrieve(price).product
    emulator.sdk.v1.products.update(str(product), params={"name": "Collab Pro 2"})
    reconciler.drain()
    sent = notifications(factory)
    assert len(sent) == count + 1
    assert sent[-1]["plan"]["product_name"] == "Collab Pro 2"


def test_unknown_user_and_bad_ids_are_4xx(api: httpx.Client) -> None:
    assert api.get("/billing/state", params={"github_user_id": 99}).status_code == 404
    assert api.get("/billing/state", params={"github_user_id": -1}).status_code == 422
    assert api.get("/billing/state").status_code == 422


def test_every_mirrored_type_marks_the_users_its_rows_concern(
    session_factory: sessionmaker[Session],
) -> None:
    """Each mirrored type is the catalog (marked by its ids) or owned by a customer (its rows
    carry `billing_customer_id`); rows naming no owner are refused, never silently unmarked."""
    from collab_billing.mirror.registry import MIRRORED_TYPES
    from collab_billing.state import outbox

    catalog = {"stripe_price_id", "stripe_product_id"}
    assert all(m.key in catalog or m.owner is not None for m in MIRRORED_TYPES)
    with session_factory() as session:
        outbox.mark_rows(session, "stripe_invoice_id", [{"billing_customer_id": 7}])
        outbox.mark_rows(session, "stripe_price_id", [{"stripe_price_id": "price_1"}])
        with pytest.raises(ValueError, match="stripe_invoice_id"):
            outbox.mark_rows(session, "stripe_invoice_id", [{"stripe_invoice_id": "in_1"}])
        session.rollback()
