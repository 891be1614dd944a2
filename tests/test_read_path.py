"""The admin API's hot read: `FastRead` on the read engine, the hand-built JSON document, and
the fast path that answers the plain case beside FastAPI (and leaves every other case to it)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from collab_billing import billing
from collab_billing.api.app import create_app
from collab_billing.api.billing import subscriptions_document
from collab_billing.api.responses import JSONBytes
from collab_billing.api.schemas import SubscriptionOut, SubscriptionsOut, as_utc
from collab_billing.config import Settings
from collab_billing.db import engine as engine_module
from collab_billing.db import queries
from collab_billing.db.engine import FastRead, make_read_engine
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
def read(engine: Engine, session_factory: sessionmaker[Session]) -> Iterator[FastRead]:
    seed(session_factory)
    read_engine = make_read_engine(engine)
    yield FastRead(read_engine, queries.USER_SUBSCRIPTIONS)
    read_engine.dispose()


def test_fast_read_rows_equal_the_orm_values(
    read: FastRead, session_factory: sessionmaker[Session]
) -> None:
    rows = queries.read_user_subscriptions(read, 1)
    assert rows is not None and [r.stripe_subscription_id for r in rows] == ["sub_old", "sub_new"]
    with session_factory() as session:
        orm = session.scalars(select(BillingSubscription).order_by(BillingSubscription.id)).all()
    for row, model in zip(rows, orm, strict=True):
        assert row.id == model.id
        assert row.stripe_subscription_status == model.stripe_subscription_status
        # SQLite stores text and 0/1: the columns' own result processors still apply.
        assert row.stripe_cancel_at_period_end is model.stripe_cancel_at_period_end
        assert isinstance(row.stripe_cancel_at_period_end, bool)
        for name in ("stripe_cancel_at", "stripe_canceled_at", "stripe_current_period_end"):
            value = getattr(row, name)
            assert value == getattr(model, name)
            assert value is None or isinstance(value, datetime)
    assert rows[1].stripe_cancel_at is not None
    assert rows[1].stripe_cancel_at.microsecond == 123456


def test_fast_read_tells_an_unknown_user_from_one_without_subscriptions(read: FastRead) -> None:
    assert queries.read_user_subscriptions(read, 2) == []  # a customer, no subscription
    assert queries.read_user_subscriptions(read, 3) == []  # no customer yet
    assert queries.read_user_subscriptions(read, 4) is None
    with pytest.raises(billing.NotFound, match="no user with github_user_id 4"):
        billing.list_user_subscriptions(read, 4)


def test_fast_read_refuses_parameters_that_need_bind_processing(engine: Engine) -> None:
    statement = select(BillingSubscription.id).where(
        BillingSubscription.stripe_current_period_end > datetime(2026, 1, 1, tzinfo=UTC)
    )
    if engine.dialect.name == "sqlite":  # SQLite's DateTime is bound as text
        with pytest.raises(TypeError, match="bind processing"):
            FastRead(engine, statement)


def reference_answer(github_user_id: int, rows: list[queries.SubscriptionRow]) -> bytes:
    """The answer as the route made it before the fast path: pydantic models, naive times
    taken as UTC."""

    def utc(value: datetime | None) -> datetime | None:
        return as_utc(value) if value is not None else None

    subscriptions = [
        SubscriptionOut(
            id=row.id,
            stripe_subscription_id=row.stripe_subscription_id,
            status=row.stripe_subscription_status,
            is_active=billing.is_active(row),
            is_cancelable=billing.is_cancelable(row),
            cancel_at_period_end=row.stripe_cancel_at_period_end,
            cancel_at=utc(row.stripe_cancel_at),
            canceled_at=utc(row.stripe_canceled_at),
            current_period_end=utc(row.stripe_current_period_end),
            price_id=row.stripe_price_id,
        )
        for row in rows
    ]
    return (
        SubscriptionsOut(
            github_user_id=github_user_id,
            has_active_subscription=any(s.is_active for s in subscriptions),
            subscriptions=subscriptions,
        )
        .model_dump_json()
        .encode()
    )


def test_the_document_is_what_the_response_model_serializes(read: FastRead) -> None:
    """The hand-built JSON equals pydantic's serialization of `SubscriptionsOut`, byte for byte
    (naive SQLite datetimes as UTC `Z`, microseconds kept)."""
    for github_user_id in (1, 2):
        rows = billing.list_user_subscriptions(read, github_user_id)
        fast = JSONBytes(subscriptions_document(github_user_id, rows)).body
        assert fast == reference_answer(github_user_id, rows)
    rows = billing.list_user_subscriptions(read, 1)
    assert (
        b'"cancel_at":"2027-01-02T03:04:05.123456Z"'
        in JSONBytes(subscriptions_document(1, rows)).body
    )


@pytest.mark.postgres_only
def test_fast_read_retries_once_on_a_connection_the_server_closed(
    read: FastRead, engine: Engine
) -> None:
    assert queries.read_user_subscriptions(read, 1)
    pool_connection = read.engine.raw_connection()
    with pool_connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    pool_connection.close()  # back to the pool, where it will be found dead
    with engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    assert queries.read_user_subscriptions(read, 1)


# -- over HTTP: the fast path and FastAPI answer alike --------------------------------------


@pytest.fixture
def api(
    settings: Settings, engine: Engine, session_factory: sessionmaker[Session]
) -> Iterator[httpx.Client]:
    seed(session_factory)
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The github_user_ids that FastAPI's route handled (the fast path calls the query
    directly, the route goes through `billing.list_user_subscriptions`)."""
    seen: list[int] = []
    original = billing.list_user_subscriptions

    def spy(read: FastRead, github_user_id: int) -> Any:
        seen.append(github_user_id)
        return original(read, github_user_id)

    monkeypatch.setattr(billing, "list_user_subscriptions", spy)
    return seen


def get(api: httpx.Client, query: str, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"Authorization": token} if token is not None else {}
    return api.get(f"/billing/subscriptions?{query}", headers=headers)


def test_the_plain_request_takes_the_fast_path(api: httpx.Client, routed: list[int]) -> None:
    fast = get(api, "github_user_id=1")
    assert fast.status_code == 200 and routed == []
    # "01" is FastAPI's to parse (it reads it as 1): the same answer through the route.
    slow = get(api, "github_user_id=01")
    assert slow.status_code == 200 and routed == [1]
    assert fast.content == slow.content
    for name in ("content-type", "content-length"):
        assert fast.headers[name] == slow.headers[name]
    assert fast.headers["x-request-id"].startswith("req_")
    assert fast.json()["has_active_subscription"] is True
    assert get(api, "github_user_id=1", token=f"Bearer {ADMIN_TOKEN}").content == fast.content
    assert routed == [1]


@pytest.mark.parametrize(
    ("query", "token", "status"),
    [
        ("github_user_id=4", ADMIN_TOKEN, 404),  # unknown user
        ("github_user_id=1", "wrong", 401),
        ("github_user_id=1", None, 401),
        ("github_user_id=1", "", 401),
        ("github_user_id=0", ADMIN_TOKEN, 422),
        ("github_user_id=9007199254740992", ADMIN_TOKEN, 422),  # 2**53
        ("github_user_id=-1", ADMIN_TOKEN, 422),
        ("github_user_id=abc", ADMIN_TOKEN, 422),
        ("", ADMIN_TOKEN, 422),
        ("github_user_id=1&github_user_id=2", ADMIN_TOKEN, 200),
        ("github_user_id=2&extra=1", ADMIN_TOKEN, 200),
    ],
)
def test_every_other_request_is_answered_by_fastapi(
    api: httpx.Client, routed: list[int], query: str, token: str | None, status: int
) -> None:
    response = get(api, query, token)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    if status == 404:
        assert routed == [4]
        assert response.json() == {
            "detail": "no user with github_user_id 4: create it with POST /users"
        }
    if status == 401:
        assert routed == []  # refused by the dependency, before the route
        assert response.headers["www-authenticate"] == "Bearer"
    if status == 200:
        assert routed  # FastAPI's, with its own parsing of repeated and unknown parameters


def test_the_read_engine_is_closed_with_the_app(settings: Settings, engine: Engine) -> None:
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as client:
        assert get(client, "github_user_id=1").status_code == 404
        assert app.state.read_engine.pool.checkedin() >= 1
    assert app.state.read_engine.pool.checkedin() == 0


@pytest.mark.postgres_only
def test_a_statement_timeout_bounds_reads_on_postgres(engine: Engine) -> None:
    read_engine = make_read_engine(engine)
    try:
        with read_engine.connect() as connection:
            timeout = connection.execute(
                text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
            ).scalar()
        assert timeout == str(engine_module.READ_STATEMENT_TIMEOUT_MS)
    finally:
        read_engine.dispose()
