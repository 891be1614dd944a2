"""Notifications to the host app: signed per Standard Webhooks, at least once, in order per
user, retried while the receiver fails, delivered after the sender is killed."""

from __future__ import annotations

import base64
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from collab_billing.billing.notify import Notifier, pending_summary
from collab_billing.cli import app as cli
from collab_billing.config import Settings
from collab_billing.db.models import BillingNotification
from collab_billing.reconcile.leader import start_in_background
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.notify_helpers import NOTIFY_SECRET, Receiver, receiver
from tests.servers import free_port
from tests.stripe_helpers import Emulator
from tests.test_entitlements import featured_price
from tests.test_reconcile_flow import add_user, checkout
from tests.test_reconcile_processes import reconciler_env, spawn, wait_until

__all__ = ["spawn"]  # the fixture, imported for the process test


@pytest.fixture
def hook() -> Iterator[Receiver]:
    with receiver() as running:
        yield running


@pytest.fixture
def notify_settings(stripe_settings: Settings, hook: Receiver) -> Settings:
    return stripe_settings.model_copy(
        update={
            "billing_notify_urls": hook.url,
            "billing_notify_secret": SecretStr(NOTIFY_SECRET),
            "billing_notify_max_backoff_seconds": 0.3,
        }
    )


@pytest.fixture
def reconciler(notify_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(notify_settings, engine, StripeGateway(notify_settings))


@pytest.fixture
def sender(notify_settings: Settings, engine: Engine) -> Iterator[Notifier]:
    notifier = Notifier(notify_settings, engine)
    thread, stop = start_in_background(notifier.run, "notifier")
    yield notifier
    stop.set()
    thread.join(30)


def subscribe(
    reconciler: Reconciler, emulator: Emulator, github_user_id: int, price: str | None = None
) -> str:
    price = price or reconciler.settings.stripe_price_id or ""
    url = checkout(reconciler, price, github_user_id)
    session = emulator.complete_checkout(url)
    return str(session["subscription"])


def versions_grow(documents: list[dict[str, Any]]) -> bool:
    versions = [d["version"] for d in documents]
    return versions == sorted(set(versions))


def test_checkout_then_cancel_are_notified_signed_and_in_order(
    reconciler: Reconciler, emulator: Emulator, hook: Receiver, sender: Notifier
) -> None:
    price = featured_price(emulator, 3, "notify")
    add_user(reconciler.factory, 501, "five")
    reconciler.drain()
    subscription = subscribe(reconciler, emulator, 501, price)
    reconciler.drain()
    hook.wait_for(lambda docs: any(d["features"] for d in docs))
    active = hook.documents(501)[-1]
    assert active["access"] == {"state": "active", "until": None}
    assert active["features"] == ["notify-000", "notify-001", "notify-002"]
    assert active["plan"]["stripe_subscription_id"] == subscription

    emulator.sdk.v1.subscriptions.cancel(subscription)
    reconciler.drain()
    hook.wait_for(lambda docs: docs[-1]["access"]["state"] == "none")
    documents = hook.documents(501)
    assert documents[-1]["features"] == [] and documents[-1]["plan"] is None
    assert documents[-1]["version"] > active["version"]
    assert versions_grow(documents)
    assert hook.rejected == 0
    assert all(body["type"] == "billing.state.updated" for body in hook.verified)
    # Recorded as delivered once the receiver has answered: a moment after it got the POST.
    wait_until(lambda: pending_summary(reconciler.factory) == (0, None), timeout=10)


def test_a_receiver_that_trickles_its_answer_does_not_hold_the_delivery(
    reconciler: Reconciler, emulator: Emulator, hook: Receiver, sender: Notifier
) -> None:
    """Only the answer's status counts: its body, sent a byte every half second for a minute
    (never past the 10 s timeout of each read), held the delivery for that minute."""
    hook.trickle_seconds = 60
    add_user(reconciler.factory, 511, "trickled")
    reconciler.drain()
    subscribe(reconciler, emulator, 511)
    reconciler.drain()
    hook.wait_for(lambda docs: any(d["access"]["state"] == "active" for d in docs))
    wait_until(lambda: pending_summary(reconciler.factory) == (0, None), timeout=10)


def test_a_failing_receiver_loses_nothing_and_order_holds(
    reconciler: Reconciler, emulator: Emulator, hook: Receiver, sender: Notifier
) -> None:
    users = [601, 602, 603]
    for user in users:
        add_user(reconciler.factory, user, f"u{user}")
    reconciler.drain()
    hook.status = 500
    subscriptions = {user: subscribe(reconciler, emulator, user) for user in users}
    reconciler.drain()
    for subscription in subscriptions.values():
        emulator.sdk.v1.subscriptions.update(subscription, params={"cancel_at_period_end": True})
    reconciler.drain()
    wait_until(lambda: hook.requests >= 6, timeout=30)  # retried, not given up
    assert hook.verified == []
    hook.status = 200

    with reconciler.factory() as session:
        written = session.execute(
            select(BillingNotification.user_id, BillingNotification.version)
        ).all()
    hook.wait_for(lambda docs: len(docs) >= len(written), timeout=30)
    for user in users:
        documents = hook.documents(user)
        assert versions_grow(documents)
        assert documents[-1]["plan"]["cancel_at_period_end"] is True
    assert len(hook.documents()) == len(written)  # each once: none lost, none repeated


def test_a_cancellation_set_for_a_date_is_notified(
    reconciler: Reconciler, emulator: Emulator, hook: Receiver, sender: Notifier
) -> None:
    add_user(reconciler.factory, 801, "eight")
    subscription = subscribe(reconciler, emulator, 801)
    reconciler.drain()
    hook.wait_for(lambda docs: bool(docs) and docs[-1]["plan"] is not None)
    assert hook.documents(801)[-1]["plan"]["cancel_at"] is None
    ends = emulator.control("GET", "clock")["now"] + 5 * 86_400
    emulator.sdk.v1.subscriptions.update(subscription, params={"cancel_at": ends})
    reconciler.drain()
    hook.wait_for(lambda docs: docs[-1]["plan"]["cancel_at"] is not None)
    plan = hook.documents(801)[-1]["plan"]
    assert (plan["status"], plan["cancel_at_period_end"]) == ("active", False)
    assert datetime.fromisoformat(plan["cancel_at"]) == datetime.fromtimestamp(ends, UTC)


def test_killed_mid_delivery_the_sender_delivers_after_restart(
    emulator: Emulator,
    engine: Engine,
    database_url: str,
    hook: Receiver,
    spawn: Callable[..., subprocess.Popen[bytes]],
    notify_settings: Settings,
) -> None:
    reconciler = Reconciler(notify_settings, engine, StripeGateway(notify_settings))
    add_user(reconciler.factory, 701, "seven")
    reconciler.drain()
    subscribe(reconciler, emulator, 701)
    reconciler.drain()  # the outbox holds the notification; no sender has run yet
    env = {
        **reconciler_env(database_url, emulator),
        "BILLING_NOTIFY_URLS": hook.url,
        "BILLING_NOTIFY_SECRET": NOTIFY_SECRET,
        "BILLING_NOTIFY_MAX_BACKOFF_SECONDS": "0.5",
    }
    hook.hang_seconds = 120  # the receiver holds the first delivery open past the test
    worker = spawn(env)
    wait_until(lambda: hook.requests >= 1, timeout=30)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert hook.verified == []

    hook.hang_seconds = 0
    restarted = spawn(env)
    hook.wait_for(lambda docs: any(d["access"]["state"] == "active" for d in docs), timeout=30)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=30) == 0
    with reconciler.factory() as session:
        assert session.scalar(
            select(BillingNotification.delivered_at).where(BillingNotification.version == 1)
        )


def subscribed_and_notified(
    reconciler: Reconciler, emulator: Emulator, hook: Receiver, user: int
) -> None:
    """The user subscribes; every notification is delivered."""
    add_user(reconciler.factory, user, f"user{user}")
    reconciler.drain()
    subscribe(reconciler, emulator, user)
    reconciler.drain()
    hook.wait_for(lambda docs: len(docs) >= 1)
    wait_until(lambda: pending_summary(reconciler.factory) == (0, None), timeout=10)


def test_a_webhook_id_is_never_another_notifications(
    reconciler: Reconciler,
    emulator: Emulator,
    hook: Receiver,
    sender: Notifier,
    notify_settings: Settings,
    engine: Engine,
) -> None:
    """Delivered rows are deleted after a week, and SQLite gives their ids out again: a
    receiver that drops a `webhook-id` it has seen (as Standard Webhooks suggests) dropped the
    next user's notifications."""
    subscribed_and_notified(reconciler, emulator, hook, 801)
    with reconciler.factory() as session, session.begin():
        session.execute(
            update(BillingNotification).values(delivered_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
    Notifier(notify_settings, engine).housekeeping()  # a week on: the delivered rows go
    seen = set(hook.message_ids)
    add_user(reconciler.factory, 802, "nine")
    subscribe(reconciler, emulator, 802)
    reconciler.drain()
    hook.wait_for(lambda docs: any(doc["github_user_id"] == 802 for doc in docs))
    assert not seen & set(hook.message_ids[len(seen) :])


@pytest.fixture
def eastern_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is not UTC (as on many servers' defaults)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_webhook_id_is_dated_as_its_body_whatever_the_local_time_zone(
    eastern_time: None, reconciler: Reconciler, emulator: Emulator, hook: Receiver, sender: Notifier
) -> None:
    """SQLite hands back times without a zone: the id read them as local time, so it changed
    with the sender's time zone, and a resend after a change was not deduplicated."""
    subscribed_and_notified(reconciler, emulator, hook, 803)
    for body, message_id in zip(hook.verified, hook.message_ids, strict=True):
        sent_at = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
        assert message_id.rsplit("_", 1)[1] == str(int(sent_at.timestamp() * 1000))


def test_a_notification_secret_is_rotated_without_a_failed_delivery(
    stripe_settings: Settings, engine: Engine, reconciler: Reconciler, emulator: Emulator
) -> None:
    """With the old and the new secret set, every delivery carries a signature of each, so
    receivers still on the old one and those moved to the new one both verify it."""
    new_secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    with receiver(NOTIFY_SECRET) as old_receiver, receiver(new_secret) as moved_receiver:
        settings = stripe_settings.model_copy(
            update={
                "billing_notify_urls": f"{old_receiver.url},{moved_receiver.url}",
                "billing_notify_secret": SecretStr(f"{NOTIFY_SECRET},{new_secret}"),
            }
        )
        notifier = Notifier(settings, engine)
        thread, stop = start_in_background(notifier.run, "notifier")
        try:
            add_user(reconciler.factory, 804, "rotating")
            subscribe(reconciler, emulator, 804)
            reconciler.drain()
            for hook in (old_receiver, moved_receiver):
                hook.wait_for(lambda docs: len(docs) >= 1)
        finally:
            stop.set()
            thread.join(30)
    assert old_receiver.rejected == moved_receiver.rejected == 0
    assert old_receiver.documents() == moved_receiver.documents()


def test_notifications_list_and_replay(
    reconciler: Reconciler,
    emulator: Emulator,
    hook: Receiver,
    sender: Notifier,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    subscribed_and_notified(reconciler, emulator, hook, 801)
    delivered = len(hook.documents())
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    listed = runner.invoke(cli, ["notifications", "list"])
    assert listed.exit_code == 0, listed.output
    assert "801" in listed.output and "delivered" in listed.output
    replayed = runner.invoke(cli, ["notifications", "replay", "--github-user-id", "801"])
    assert replayed.exit_code == 0, replayed.output
    assert f"{delivered} notification" in replayed.output
    hook.wait_for(lambda docs: len(docs) >= 2 * delivered)
    assert hook.message_ids[:delivered] == hook.message_ids[delivered:]  # same ids: dedupable
    both = ["notifications", "replay", "--github-user-id", "801", "--expired"]
    assert "0 notification" in runner.invoke(cli, both).output  # filters combine: none expired
    bad = runner.invoke(cli, ["notifications", "replay"])
    assert bad.exit_code == 2 and "--id" in bad.output


def test_without_receivers_notifications_are_written_and_settled(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """`BILLING_NOTIFY_URLS` unset: the versions grow as they would with receivers, and the
    sender settles every notification as delivered, none left pending."""
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    notifier = Notifier(stripe_settings, engine)
    thread, stop = start_in_background(notifier.run, "notifier")
    try:
        users = [901, 902, 903]
        for user in users:
            add_user(reconciler.factory, user, f"n{user}")
        reconciler.drain()
        subscriptions = [subscribe(reconciler, emulator, user) for user in users]
        reconciler.drain()
        for subscription in subscriptions:
            emulator.sdk.v1.subscriptions.cancel(subscription)
        reconciler.drain()
        wait_until(lambda: pending_summary(reconciler.factory) == (0, None), timeout=10)
    finally:
        stop.set()
        thread.join(30)
    with reconciler.factory() as session:
        rows = session.execute(
            select(BillingNotification.user_id, BillingNotification.version)
            .where(BillingNotification.delivered_at.is_not(None))
            .order_by(BillingNotification.id)
        ).all()
    owners = {owner for owner, _ in rows}  # our user ids
    assert len(owners) == len(users)
    for user in owners:
        versions = [version for owner, version in rows if owner == user]
        assert versions == sorted(set(versions)) and versions[-1] >= 2


def test_stop_ends_the_sender(notify_settings: Settings, engine: Engine) -> None:
    notifier = Notifier(notify_settings, engine)
    stop = threading.Event()
    thread = threading.Thread(target=notifier.run, args=(stop,))
    thread.start()
    stop.set()
    thread.join(10)
    assert not thread.is_alive()


def test_a_notification_failing_past_the_retry_window_expires_then_replays(
    notify_settings: Settings, engine: Engine, emulator: Emulator, hook: Receiver
) -> None:
    """Expired after the window; replayed, it gets a new window: retried again, not given up
    on at its first failure."""
    settings = notify_settings.model_copy(update={"billing_notify_retry_window_seconds": 2.0})
    reconciler = Reconciler(settings, engine, StripeGateway(settings))
    add_user(reconciler.factory, 901, "nine")
    reconciler.drain()
    subscribe(reconciler, emulator, 901)
    reconciler.drain()
    failed_before = REGISTRY.get_sample_value(
        "collab_billing_notification_deliveries_total", {"outcome": "expired"}
    )
    hook.status = 500
    notifier = Notifier(settings, engine)
    thread, stop = start_in_background(notifier.run, "notifier")
    try:
        wait_until(lambda: pending_summary(reconciler.factory)[0] == 0, timeout=30)
        with reconciler.factory() as session:
            [row] = session.scalars(select(BillingNotification)).all()
        assert row.expired_at is not None and row.delivered_at is None
        assert row.attempts >= 1 and row.last_error and "HTTP 500" in row.last_error
        assert (
            REGISTRY.get_sample_value(
                "collab_billing_notification_deliveries_total", {"outcome": "expired"}
            )
            or 0
        ) > (failed_before or 0)
        refused = hook.requests
        result = CliRunner().invoke(
            cli, ["notifications", "replay", "--expired"], env={"DATABASE_URL": str(engine.url)}
        )
        assert result.exit_code == 0, result.output
        wait_until(lambda: hook.requests >= refused + 2, timeout=10)  # failing again, retried
        hook.status = 200
        hook.wait_for(lambda docs: len(docs) == 1)
    finally:
        stop.set()
        thread.join(30)


def test_a_receivers_credentials_stay_out_of_errors_and_logs(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver URL with a password and a token, not answering: the failures are recorded
    (`last_error`, shown by `notifications list`) and logged without them."""
    url = f"http://hook:s3cretpw@127.0.0.1:{free_port()}/b?token=tok123#frag456"
    settings = stripe_settings.model_copy(
        update={
            "billing_notify_urls": url,
            "billing_notify_secret": SecretStr(NOTIFY_SECRET),
            "billing_notify_max_backoff_seconds": 0.3,
        }
    )
    reconciler = Reconciler(settings, engine, StripeGateway(settings))
    add_user(reconciler.factory, 640, "creds")
    reconciler.drain()
    subscribe(reconciler, emulator, 640)
    reconciler.drain()

    def errors() -> list[str]:
        with reconciler.factory() as session:
            return [e for e in session.scalars(select(BillingNotification.last_error)) if e]

    thread, stop = start_in_background(Notifier(settings, engine).run, "notifier")
    try:
        wait_until(lambda: bool(errors()), timeout=20)
    finally:
        stop.set()
        thread.join(30)
    assert "127.0.0.1" in errors()[0]
    logged = " ".join(str(vars(record)) for record in caplog.records)
    for secret in ("s3cretpw", "tok123", "frag456"):
        assert all(secret not in error for error in errors()) and secret not in logged
