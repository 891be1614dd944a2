"""The state document: `GET /billing/state`, and one outbox row per change of it, written in
the transaction of the change (a catch-up's: once per user, the state it ends in)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.models import BillingNotification, BillingState, ReconcilerState, User
from collab_billing.reconcile.ledger import DOCUMENT_FORMAT
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from tests.reconcile_helpers import assert_matches_stripe, generate_backlog
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

    catalog = {"stripe_price_id", "stripe_product_id", "stripe_coupon_id"}
    assert all(m.key in catalog or m.owner is not None for m in MIRRORED_TYPES)
    with session_factory() as session:
        outbox.mark_rows(session, "stripe_invoice_id", [{"billing_customer_id": 7}])
        outbox.mark_rows(session, "stripe_price_id", [{"stripe_price_id": "price_1"}])
        with pytest.raises(ValueError, match="stripe_invoice_id"):
            outbox.mark_rows(session, "stripe_invoice_id", [{"stripe_invoice_id": "in_1"}])
        session.rollback()


def states_of(api: httpx.Client, users: range) -> dict[int, dict[str, Any]]:
    return {n: api.get("/billing/state", params={"github_user_id": n}).json() for n in users}


def by_user(sent: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {}
    for payload in sent:
        grouped.setdefault(payload["github_user_id"], []).append(payload)
    return grouped


def test_a_catch_up_notifies_each_user_once_of_the_state_it_ends_in(
    reconciler: Reconciler, emulator: Emulator, api: httpx.Client
) -> None:
    # 1,000 events of 100 users over a week: several batches, most users in more than one.
    generate_backlog(emulator, reconciler.factory, customers=100, per_customer=10)
    reconciler.drain()
    assert assert_matches_stripe(emulator, reconciler.factory) == 100
    sent = by_user(notifications(reconciler.factory))
    states = states_of(api, range(1, 101))
    assert set(sent) == set(states)
    for github_user_id, payloads in sent.items():
        assert payloads == [states[github_user_id]]  # one: the state the user ends in


def test_a_resync_notifies_each_user_once_of_the_state_it_ends_in(
    reconciler: Reconciler, emulator: Emulator, api: httpx.Client
) -> None:
    """A resync writes each type in transactions of its own: a user was notified of each step
    (a plan without its amount, then with it, then with its product's name)."""
    generate_backlog(emulator, reconciler.factory, customers=20, per_customer=10)
    reconciler.resync("on demand")
    sent = by_user(notifications(reconciler.factory))
    states = states_of(api, range(1, 21))
    assert set(sent) == set(states)
    for github_user_id, payloads in sent.items():
        assert payloads == [states[github_user_id]]


def test_a_document_read_while_a_resync_runs_names_its_plans_price(
    reconciler: Reconciler, emulator: Emulator, api: httpx.Client
) -> None:
    """`GET /billing/state` recomputes a stale document, also while a resync runs: the resync
    wrote the subscriptions before the prices they are on, and such a read stored and notified
    a plan without its amount. Here the resync stops where the prices are listed."""
    generate_backlog(emulator, reconciler.factory, customers=5, per_customer=10)
    emulator.control(
        "POST", "faults", {"rate": 1.0, "statuses": [400], "path_prefix": "/v1/prices"}
    )
    with pytest.raises(StripeGatewayError):
        reconciler.resync("on demand")
    emulator.control("DELETE", "faults")
    for github_user_id in range(1, 6):
        plan = api.get("/billing/state", params={"github_user_id": github_user_id}).json()["plan"]
        assert plan is None or plan["unit_amount"] is not None, plan


def test_a_document_left_stale_by_an_interrupted_catch_up_is_served_fresh_and_notified(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, api: httpx.Client
) -> None:
    generate_backlog(emulator, reconciler.factory, customers=100, per_customer=10)
    stop = threading.Event()
    stop.set()  # the drain returns after its first batch, as if killed before its end
    assert reconciler.drain(stop).interrupted
    assert notifications(reconciler.factory) == []
    stale = stale_users(reconciler.factory)
    assert stale  # the batch's users are marked, not yet recomputed

    first = api.get("/billing/state", params={"github_user_id": min(stale)}).json()
    assert first["version"] == 1  # computed from the rows, stored and notified
    assert notifications(reconciler.factory) == [first]
    assert min(stale) not in stale_users(reconciler.factory)

    # A restarted reconciler recomputes the rest before it reads Stripe: even with the
    # Events API failing, they are notified.
    restarted = Reconciler(stripe_settings, reconciler.engine, StripeGateway(stripe_settings))
    emulator.control(
        "POST", "faults", {"rate": 1.0, "statuses": [400], "path_prefix": "/v1/events"}
    )
    with pytest.raises(StripeGatewayError):
        restarted.drain()
    assert stale_users(reconciler.factory) == set()
    assert len(notifications(reconciler.factory)) == len(stale)
    emulator.control("DELETE", "faults")
    restarted.drain()
    assert stale_users(reconciler.factory) == set()
    states = states_of(api, range(1, 101))
    sent = by_user(notifications(reconciler.factory))
    assert set(sent) == set(states)
    for github_user_id, payloads in sent.items():
        assert payloads[-1] == states[github_user_id]
        assert [p["version"] for p in payloads] == list(range(1, len(payloads) + 1))


def stale_users(factory: sessionmaker[Session]) -> set[int]:
    """The GitHub ids of the users whose state documents are marked stale."""
    with factory() as session:
        return set(
            session.scalars(
                select(User.github_user_id)
                .join(BillingState, BillingState.user_id == User.id)
                .where(BillingState.stale)
            )
        )


def test_documents_stored_by_an_older_release_are_recomputed_and_notified_once(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings, api: httpx.Client
) -> None:
    """After an upgrade the stored documents were served, and notified, as the older release
    computed them (a field it did not have, an access decided by its rules) until the user's
    rows changed again; the first poll of the new release recomputes them."""
    factory = reconciler.factory
    add_user(factory, 4242, "octocat")
    emulator.complete_checkout(checkout(reconciler, stripe_settings.stripe_price_id or "", 4242))
    reconciler.drain()
    current = api.get("/billing/state", params={"github_user_id": 4242}).json()
    assert current["access"]["state"] == "active"

    older = {key: value for key, value in current.items() if key not in ("version", "trial_end")}
    older["access"] = {"state": "grace", "until": None}
    with factory() as session, session.begin():
        session.execute(update(BillingState).values(document=older))
        session.execute(delete(ReconcilerState).where(ReconcilerState.name == DOCUMENT_FORMAT))
    assert api.get("/billing/state", params={"github_user_id": 4242}).json()["access"] == {
        "state": "grace",
        "until": None,
    }

    reconciler.drain()  # the release's first poll
    recomputed = api.get("/billing/state", params={"github_user_id": 4242}).json()
    assert recomputed == {**current, "version": current["version"] + 1}
    assert notifications(factory)[-1] == recomputed
    reconciler.drain()
    assert api.get("/billing/state", params={"github_user_id": 4242}).json() == recomputed
