"""The usage sender against the emulator: every accepted record reaches Stripe exactly once
(under faults, lost answers and SIGKILL), refused records are failed with Stripe's reason."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.sender import UsageSender, read_usage_status
from collab_billing.config import Settings
from collab_billing.db.models import BillingCustomer, BillingUsageEvent, User
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import EMULATOR_KEY, Emulator
from tests.test_billing_api import add_user, serve
from tests.test_usage_api import make_meter, meter, record  # noqa: F401  (the fixture)


@pytest.fixture
def api(stripe_settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    yield from serve(stripe_settings, engine)


def ingest(api: httpx.Client, users: list[int], count: int, seed: int = 1) -> None:
    """`count` records spread over the users, integer values, in batches of 500."""
    rng = random.Random(seed)
    records = [record(rng.choice(users), f"r{i}", rng.randint(1, 100)) for i in range(count)]
    for start in range(0, count, 500):
        answer = api.post("/billing/usage", json={"events": records[start : start + 500]})
        assert answer.status_code == 202, answer.text


def drain(sender: UsageSender, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while read_usage_status(sender.factory).counts.get("pending", 0):
        assert time.monotonic() < deadline, "records still pending"
        if sender.send_batch() == 0:
            time.sleep(0.2)


def accepted_sums(factory: sessionmaker[Session]) -> dict[str, Decimal]:
    """Per Stripe customer: the sum of the records sent."""
    sums: dict[str, Decimal] = defaultdict(Decimal)
    with factory() as session:
        rows = session.execute(
            select(BillingCustomer.stripe_customer_id, BillingUsageEvent.value)
            .join(BillingUsageEvent, BillingUsageEvent.user_id == BillingCustomer.user_id)
            .where(BillingUsageEvent.status == "sent")
        )
        for customer, value in rows:
            sums[customer] += Decimal(value)
    return dict(sums)


def stripe_sums(emulator: Emulator, meter_id: str, customers: list[str]) -> dict[str, Decimal]:
    now = emulator.control("GET", "clock")["now"]
    start, end = (now - 35 * 86400) // 60 * 60, now // 60 * 60 + 120
    sums = {}
    for customer in customers:
        page = emulator.sdk.v1.billing.meters.event_summaries.list(
            meter_id, params={"customer": customer, "start_time": start, "end_time": end}
        )
        sums[customer] = Decimal(str(sum(s.aggregated_value for s in page.data)))
    return sums


def assert_exactly_once(emulator: Emulator, factory: sessionmaker[Session], meter_id: str) -> None:
    with factory() as session:
        identifiers = set(session.scalars(select(BillingUsageEvent.identifier)))
        statuses = set(session.scalars(select(BillingUsageEvent.status)))
    assert statuses == {"sent"}
    sent = emulator.http.get("/_emulator/state", params={"events": "true"}).json()
    stripe_identifiers = [event["identifier"] for event in sent["meter_events"]]
    assert len(stripe_identifiers) == len(set(stripe_identifiers)) == len(identifiers)
    assert set(stripe_identifiers) == identifiers
    ours = accepted_sums(factory)
    assert stripe_sums(emulator, meter_id, list(ours)) == ours


def test_records_reach_stripe_once_and_customers_are_created(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    for user in (1, 2, 3):
        add_user(api, user, f"user{user}")
    ingest(api, [1, 2, 3], 300)
    # A third of the answers lost after Stripe recorded the event: sent again, refused as a
    # duplicate identifier, counted once.
    emulator.control(
        "POST",
        "faults",
        {"drop_rate": 0.3, "drop_after_processing": True,
         "path_prefix": "/v1/billing/meter_events"},
    )  # fmt: skip
    fast = stripe_settings.model_copy(update={"billing_usage_requests_per_second": 300.0})
    # Each lost answer is retried after the SDK's backoff (about half a second), a few users'
    # records one after another: 10-30 s, and past a minute on a busy machine.
    drain(UsageSender(fast, engine), timeout=180)
    emulator.control("DELETE", "faults")
    with session_factory() as session:
        linked = session.execute(
            select(User.github_user_id, BillingCustomer.stripe_customer_id).join(BillingCustomer)
        ).all()
    assert sorted(github_user_id for github_user_id, _ in linked) == [1, 2, 3]
    UsageSender(fast, engine).send_batch()  # idle: publishes the outbox's figures
    exposed = api.get("/metrics").text
    assert 'collab_billing_usage_records{status="sent"} 300.0' in exposed
    assert 'collab_billing_usage_records{status="pending"} 0.0' in exposed
    assert "collab_billing_usage_oldest_pending_age_seconds 0.0" in exposed
    for github_user_id, customer in linked:
        metadata = emulator.sdk.v1.customers.retrieve(customer).metadata
        assert metadata["github_user_id"] == str(github_user_id)
    assert_exactly_once(emulator, session_factory, meter)


def test_a_record_stripe_refuses_is_failed_with_stripes_reason(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    database_url: str,
) -> None:
    add_user(api, 1)
    # A yearly usage subscription: the records stay in its period when they are 36 days old.
    yearly = emulator.sdk.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount_decimal": "0.5",
            "recurring": {"interval": "year", "usage_type": "metered", "meter": meter},
            "product_data": {"name": "Tokens, yearly"},
        }
    )
    emulator.subscribe_in_stripe(1, yearly.id)
    Reconciler(stripe_settings, engine, StripeGateway(stripe_settings)).drain()
    cap = {"github_user_id": 1, "max_monthly_spend_cents": 1}
    assert api.put("/billing/preferences", json=cap).status_code == 200
    ingest(api, [1], 3)
    state = api.get("/billing/state", params={"github_user_id": 1}).json()
    assert state["usage"]["over_spend_cap"] is True
    emulator.control("POST", "clock/advance", {"seconds": 36 * 86400})
    sender = UsageSender(stripe_settings, engine)
    drain(sender)
    status = read_usage_status(session_factory)
    assert status.counts == {"failed": 3}
    # No longer counted in the spend: the state document says the cap is not passed.
    after = api.get("/billing/state", params={"github_user_id": 1}).json()
    assert after["usage"]["over_spend_cap"] is False and after["version"] > state["version"]
    assert all("35 calendar days" in (f.error or "") for f in status.recent_failures)
    shown = subprocess.run(
        [sys.executable, "-m", "collab_billing", "usage", "--status"],
        env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert "pending: 0  sent: 0  failed: 3" in shown.stdout
    assert "oldest pending: none" in shown.stdout
    assert shown.stdout.count("35 calendar days") == 3
    assert "user 1, idempotency key 'r0'" in shown.stdout  # as the host app knows it


def test_records_wait_while_stripe_refuses_the_key(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A 401 (a key revoked, or rotated) is the service's fault, not the records': they wait
    and are sent once the key works. They were failed for good, and never billed."""
    add_user(api, 1)
    ingest(api, [1], 3)
    fault = {"rate": 1.0, "statuses": [401], "path_prefix": "/v1/billing/meter_events"}
    emulator.control("POST", "faults", {**fault, "count": 3})
    drain(UsageSender(stripe_settings, engine))
    assert read_usage_status(session_factory).counts == {"sent": 3}
    assert_exactly_once(emulator, session_factory, meter)


def sender_env(database_url: str, emulator: Emulator) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": EMULATOR_KEY,
        "STRIPE_API_BASE": emulator.url,
        "STRIPE_MAX_NETWORK_RETRIES": "0",
        "BILLING_USAGE_REQUESTS_PER_SECOND": "300",
        "LOG_FORMAT": "json",
    }


def test_killed_sender_under_faults_sends_each_record_once(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    users = list(range(1, 21))
    for user in users:
        add_user(api, user, f"user{user}")
    ingest(api, users, 1000)
    emulator.control(
        "POST",
        "faults",
        {
            "rate": 0.2,
            "statuses": [500, 429],
            "retry_after": 0,
            "path_prefix": "/v1/billing/meter_events",
        },
    )
    rng = random.Random(7)
    command = [sys.executable, "-m", "collab_billing", "usage", "--send"]
    env = sender_env(database_url, emulator)
    for _ in range(3):
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 2.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert read_usage_status(session_factory).counts.get("pending", 0) > 0  # killed mid-way
    process = subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while read_usage_status(session_factory).counts.get("pending", 0):
            assert time.monotonic() < deadline, "records still pending"
            time.sleep(0.5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    emulator.control("DELETE", "faults")
    assert_exactly_once(emulator, session_factory, meter)


def test_one_sender_per_database(stripe_settings: Settings, engine: Engine) -> None:
    first, second = UsageSender(stripe_settings, engine), UsageSender(stripe_settings, engine)
    try:
        assert first.lock.acquire()
        assert not second.lock.acquire()  # it stands by
        first.lock.release()
        assert second.lock.acquire()  # and takes over once the leader is gone
    finally:
        first.lock.release()
        second.lock.release()


def test_a_value_reaches_stripe_digit_for_digit(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """The value Stripe bills is the number the app sent, on both engines (SQLite keeps a
    NUMERIC as a double: 98765.4321 was sent as 98765.432100000005)."""
    add_user(api, 1)
    values = ["98765.4321", "1234567.891", "0.000000000001", "999999999999999"]
    records = [record(1, f"v{i}", float(value)) for i, value in enumerate(values)]
    assert api.post("/billing/usage", json={"events": records}).status_code == 202
    with session_factory() as session:
        kept = session.scalars(select(BillingUsageEvent.value).order_by(BillingUsageEvent.id))
        assert [Decimal(value) for value in kept] == [Decimal(value) for value in values]
    drain(UsageSender(stripe_settings, engine))
    sent = emulator.http.get("/_emulator/state", params={"events": "true"}).json()
    assert [event["payload"]["value"] for event in sent["meter_events"]] == values


def test_a_record_stripe_failed_for_a_moment_holds_back_the_later_ones_of_its_meter(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """A user's records of a `last` meter reach Stripe in the order they were accepted:
    Stripe bills the last one of the newest second. After a transient failure of the first,
    the later ones were sent at once, and the first one after them on its retry."""
    make_meter(emulator, "seats", "last")
    resync(session_factory, StripeGateway(stripe_settings))
    add_user(api, 1)
    assert api.post("/billing/usage", json=record(1, "a", meter="seats")).is_success
    emulator.control(
        "POST", "faults",
        {"rate": 1.0, "statuses": [500], "count": 1, "path_prefix": "/v1/billing/meter_events"},
    )  # fmt: skip
    UsageSender(stripe_settings, engine).send_batch()  # "a" fails: retried a second later
    emulator.control("DELETE", "faults")
    for key in ("b", "c"):
        assert api.post("/billing/usage", json=record(1, key, meter="seats")).is_success
    drain(UsageSender(stripe_settings, engine))
    with session_factory() as session:
        accepted = list(
            session.scalars(select(BillingUsageEvent.identifier).order_by(BillingUsageEvent.id))
        )
    sent = emulator.http.get("/_emulator/state", params={"events": "true"}).json()
    assert [event["identifier"] for event in sent["meter_events"]] == accepted


def test_a_record_waiting_out_a_retry_holds_back_no_other_user(
    api: httpx.Client,
    emulator: Emulator,
    meter: str,  # noqa: F811
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """The records it holds back (its user's later ones of a `last` meter) filled the batch,
    which came back empty: every other user's records waited for its retry, up to 5 minutes."""
    make_meter(emulator, "seats", "last")
    resync(session_factory, StripeGateway(stripe_settings))
    for user in (1, 2):
        add_user(api, user)
    seats = [record(1, f"s{n}", n + 1, meter="seats") for n in range(250)]
    assert api.post("/billing/usage", json={"events": seats}).is_success
    emulator.control(
        "POST", "faults",
        {"rate": 1.0, "statuses": [500], "count": 1, "path_prefix": "/v1/billing/meter_events"},
    )  # fmt: skip
    sender = UsageSender(stripe_settings, engine)
    sender.send_batch()  # the first fails; its backoff has grown to five minutes, say
    emulator.control("DELETE", "faults")
    with session_factory() as session, session.begin():
        session.execute(
            update(BillingUsageEvent)
            .where(BillingUsageEvent.attempts > 0)
            .values(next_attempt_at=int(time.time()) + 300)
        )
    assert api.post("/billing/usage", json=record(2, "t", 5)).is_success
    sender.send_batch()
    with session_factory() as session:
        statuses = dict(
            session.execute(
                select(User.github_user_id, BillingUsageEvent.status)
                .join(User, User.id == BillingUsageEvent.user_id)
                .where(BillingUsageEvent.idempotency_key.in_(["s0", "t"]))
            ).all()
        )
    assert statuses == {1: "pending", 2: "sent"}
