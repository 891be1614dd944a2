"""`GET /billing/subscriptions`, the hot read ("is this user paying?"), over real HTTP: the
document, an unknown user against one without subscriptions, and every kind of bad query."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import Engine, insert, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from collab_billing.db.models import BillingCustomer, BillingSubscription, User
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerThread

PERIOD_END = datetime(2026, 12, 25, 6, 44, 11, tzinfo=UTC)
CANCEL_AT = datetime(2027, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def seed(factory: sessionmaker[Session]) -> None:
    """User 1: two subscriptions (one canceling, with microseconds); user 2: a customer and no
    subscription; user 3: no customer; user 4 does not exist."""
    with factory() as session, session.begin():
        session.execute(
            insert(User),
            [{"github_user_id": n, "github_login": f"user{n}"} for n in (1, 2, 3)],
        )
        ids = {gid: uid for gid, uid in session.execute(select(User.github_user_id, User.id))}
        session.execute(
            insert(BillingCustomer),
            [
                {"user_id": ids[1], "stripe_customer_id": "cus_one"},
                {"user_id": ids[2], "stripe_customer_id": "cus_two"},
            ],
        )
        customer = session.scalar(
            select(BillingCustomer.id).where(BillingCustomer.stripe_customer_id == "cus_one")
        )
        session.execute(
            insert(BillingSubscription),
            [
                {
                    "billing_customer_id": customer,
                    "stripe_subscription_id": "sub_old",
                    "stripe_subscription_status": "canceled",
                    "stripe_cancel_at_period_end": False,
                    "stripe_canceled_at": PERIOD_END - timedelta(days=40),
                    "stripe_state_as_of": 1,
                },
                {
                    "billing_customer_id": customer,
                    "stripe_subscription_id": "sub_new",
                    "stripe_subscription_status": "active",
                    "stripe_cancel_at_period_end": True,
                    "stripe_cancel_at": CANCEL_AT,
                    "stripe_current_period_end": PERIOD_END,
                    "stripe_price_id": "price_x",
                    "stripe_state_as_of": 2,
                },
            ],
        )


@pytest.fixture
def api(
    settings: Settings, engine: Engine, session_factory: sessionmaker[Session]
) -> Iterator[httpx.Client]:
    seed(session_factory)
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def get(api: httpx.Client, query: str, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": token} if token is not None else {}
    return api.get(f"/billing/subscriptions?{query}", headers=headers)


def test_the_document(api: httpx.Client) -> None:
    response = get(api, "github_user_id=1")
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    document = response.json()
    assert document["github_user_id"] == 1
    assert document["has_active_subscription"] is True
    old, new = document["subscriptions"]
    assert (old["stripe_subscription_id"], old["status"], old["is_active"]) == (
        "sub_old",
        "canceled",
        False,
    )
    assert new == {
        "id": new["id"],
        "stripe_subscription_id": "sub_new",
        "status": "active",
        "is_active": True,
        "is_cancelable": False,  # already set to cancel at period end
        "cancel_at_period_end": True,
        "cancel_at": "2027-01-02T03:04:05.123456Z",  # SQLite's naive times are UTC
        "canceled_at": None,
        "current_period_end": "2026-12-25T06:44:11Z",
        "price_id": "price_x",
        # The price is not in the mirrored catalog: the plan names only its id.
        "plan": {
            "stripe_price_id": "price_x",
            "lookup_key": None,
            "product_name": None,
            "unit_amount": None,
            "currency": None,
            "interval": None,
            "interval_count": None,
        },
        "quantity": None,
        "trial_end": None,
        "kind": "paid",
        "cancellation_reason": None,
    }
    # "01" is the same id; `Bearer` or bare token alike.
    assert get(api, "github_user_id=01", token=f"Bearer {ADMIN_TOKEN}").json() == document


def test_an_unknown_user_is_told_from_one_without_subscriptions(api: httpx.Client) -> None:
    for github_user_id in (2, 3):  # a customer and no subscription; no customer yet
        response = get(api, f"github_user_id={github_user_id}")
        assert response.status_code == 200
        assert response.json()["subscriptions"] == []
        assert response.json()["has_active_subscription"] is False
    unknown = get(api, "github_user_id=4")
    assert unknown.status_code == 404
    assert unknown.json() == {"detail": "no user with github_user_id 4: create it with POST /users"}


@pytest.mark.parametrize(
    ("query", "token", "status"),
    [
        ("github_user_id=1", "wrong", 401),
        ("github_user_id=1", None, 401),
        ("github_user_id=1", "", 401),
        ("github_user_id=0", ADMIN_TOKEN, 422),
        ("github_user_id=9007199254740992", ADMIN_TOKEN, 422),  # 2**53
        ("github_user_id=-1", ADMIN_TOKEN, 422),
        ("github_user_id=abc", ADMIN_TOKEN, 422),
        # Not digits alone: Python's and pydantic's lax integers would read 1001 (or 1).
        ("github_user_id=1_001", ADMIN_TOKEN, 422),
        ("github_user_id=%2B1001", ADMIN_TOKEN, 422),
        ("github_user_id=1001.0", ADMIN_TOKEN, 422),
        ("github_user_id=%201001", ADMIN_TOKEN, 422),
        ("github_user_id=%EF%BC%91", ADMIN_TOKEN, 422),  # a fullwidth digit one
        ("", ADMIN_TOKEN, 422),
        # Repeated: FastAPI would silently take the last one.
        ("github_user_id=1001&github_user_id=1", ADMIN_TOKEN, 422),
        ("github_user_id=1&github_user_id=1", ADMIN_TOKEN, 422),
        # Not taken here (a misspelt name): FastAPI would silently ignore it.
        ("github_user_id=1001&githubuserid=5", ADMIN_TOKEN, 422),
    ],
)
def test_bad_requests(api: httpx.Client, query: str, token: str | None, status: int) -> None:
    response = get(api, query, token)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if "githubuserid" in query:
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "githubuserid"] and "not taken" in error["msg"]
    elif "&" in query:
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "github_user_id"]
        assert "more than once" in error["msg"]


def test_many_reads_at_once_all_succeed(api: httpx.Client) -> None:
    """More requests at once than worker threads and pooled connections: each is answered.
    (A session dependency that connected on one worker thread and closed on another held
    connections while waiting for a thread: every thread then waited for a connection, and
    requests failed after the pool's 30 s timeout.)"""

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(
            base_url=str(api.base_url), timeout=60, limits=limits
        ) as client:
            headers = {"Authorization": ADMIN_TOKEN}
            responses = await asyncio.gather(
                *(
                    client.get(
                        f"/billing/subscriptions?github_user_id={1 + n % 3}", headers=headers
                    )
                    for n in range(300)
                )
            )
        return [response.status_code for response in responses]

    started = time.monotonic()
    assert set(asyncio.run(burst())) == {200}
    assert time.monotonic() - started < 20
