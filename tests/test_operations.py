"""Operations: `GET /metrics` after a real run, request ids in headers and log lines, JSON
logs with no secret or customer payload, `reconcile --status`, and SIGTERM exiting 0."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.cli import print_status
from collab_billing.config import Settings
from collab_billing.db.models import UnmatchedStripeCustomer
from collab_billing.logs import configure_logging
from collab_billing.reconcile import ledger
from collab_billing.reconcile.resync import resync
from collab_billing.reconcile.run import Reconciler, read_status
from collab_billing.stripe_gateway import Event, StripeGateway
from tests.conftest import ADMIN_TOKEN
from tests.ops_helpers import (
    WHSEC_NEW,
    WHSEC_OLD,
    Service,
    churn,
    delivered_ok,
    reap,
    relevant_events,
    running_service,
    service_env,
    set_synced,
    sign,
    subscribe,
    terminate,
    wait_until,
)
from tests.reconcile_helpers import assert_matches_stripe
from tests.servers import free_port
from tests.stripe_helpers import EMULATOR_KEY, Emulator

SECRETS = (EMULATOR_KEY, ADMIN_TOKEN, WHSEC_OLD, WHSEC_NEW)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def summed(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def test_metrics_after_a_run(stripe_settings: Settings, engine: Engine, emulator: Emulator) -> None:
    with running_service(stripe_settings, engine, reconcile_enabled=True) as service:
        before = scrape(service.url)
        catalog = {e["id"] for e in relevant_events(emulator)}  # made before the endpoint
        emulator.control(
            "POST",
            "webhook_endpoints",
            {"url": f"{service.url}/stripe/webhooks", "secret": WHSEC_NEW},
        )
        for user in (1, 2):
            churn(emulator, subscribe(service, emulator, user))
        expected = {e["id"] for e in relevant_events(emulator)} - catalog
        wait_until(lambda: delivered_ok(emulator) >= expected, what="deliveries")
        assert service.post_webhook(b"{}", sign(b"{}", "whsec_wrong_one")).status_code == 400

        def polled(samples: Samples) -> bool:
            done = summed(samples, "collab_billing_events_fetched_total") - summed(
                before, "collab_billing_events_fetched_total"
            )
            return done >= len(expected)

        wait_until(lambda: polled(scrape(service.url)), what="a poll that read every event")
        # Stripe fails twice: the failed requests are counted and made again, and polls go on.
        emulator.control(
            "POST",
            "faults",
            {"rate": 1.0, "statuses": [500], "path_prefix": "/v1/events", "count": 2},
        )
        wait_until(
            lambda: value(scrape(service.url), "collab_billing_stripe_requests_total",
                          operation="events.list", status="500")
            >= value(before, "collab_billing_stripe_requests_total",
                     operation="events.list", status="500") + 2,
            what="failed Stripe requests",
        )  # fmt: skip
        time.sleep(2.5)  # the request made again (after 0.5 s, then 1 s), and a poll after
        after = scrape(service.url)
    assert assert_matches_stripe(emulator, service.factory) == 2

    def delta(name: str, **labels: str) -> float:
        return summed(after, name, **labels) - summed(before, name, **labels)

    assert delta("collab_billing_events_fetched_total", type="customer.subscription.updated") > 0
    assert delta("collab_billing_events_total", outcome="applied") >= len(expected) * 0.5
    # Each event was applied once, by a webhook or a poll; the rest of its sightings are
    # duplicates for webhooks and never reach the applier for polls. (The catalog's events,
    # older than the endpoint, may be polled and applied too.)
    assert delta("collab_billing_events_total", outcome="applied") + delta(
        "collab_billing_events_total", outcome="stale"
    ) <= len(expected | catalog)
    assert delta("collab_billing_apply_batch_seconds_count", source="webhook") >= len(expected)
    assert delta("collab_billing_apply_batch_seconds_sum", source="webhook") > 0
    assert delta("collab_billing_poll_seconds_count") >= 2
    assert delta("collab_billing_stripe_requests_total", operation="events.list", status="200") > 0
    assert delta("collab_billing_stripe_requests_total", status="500") >= 2
    assert delta("collab_billing_webhook_deliveries_total", outcome="bad_signature") == 1
    assert delta("collab_billing_webhook_deliveries_total") >= len(expected) + 1
    assert summed(after, "collab_billing_resyncs_total") >= 1  # the first poll: never synced
    lag = value(after, "collab_billing_reconciler_lag_seconds")
    assert 0 <= lag < 60, lag
    assert (
        abs(value(after, "collab_billing_last_complete_poll_timestamp_seconds") - time.time()) < 10
    )
    assert value(after, "collab_billing_reconciler_leader") == 1
    assert value(after, "collab_billing_failed_events") == 0


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str], settings: Settings) -> Iterator[Any]:
    """The service's own logging set-up (JSON lines, DEBUG) writing into captured stderr."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    levels = {name: logging.getLogger(name).level for name in ("stripe", "alembic", "httpx")}
    configure_logging(
        settings.model_copy(
            update={
                "log_format": "json",
                "stripe_api_key": SecretStr(EMULATOR_KEY),
                "stripe_webhook_secret": SecretStr(f"{WHSEC_OLD},{WHSEC_NEW}"),
            }
        ),
        logging.DEBUG,
    )
    # capsys swaps sys.stderr only when the test starts: write to whatever it is then.
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(_CurrentStderr())

    def lines() -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    yield lines
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def test_request_ids_and_json_log_lines(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, json_logs: Any
) -> None:
    with running_service(stripe_settings, engine) as service:
        echoed = httpx.get(f"{service.url}/healthz", headers={"X-Request-Id": "trace-7f.3:a"})
        assert echoed.headers["x-request-id"] == "trace-7f.3:a"
        made = httpx.get(f"{service.url}/healthz").headers["x-request-id"]
        replaced = httpx.get(f"{service.url}/healthz", headers={"X-Request-Id": "a b" * 100})
        # An id of the shape of the service's own would pass a client's lines off as a poll's.
        posing = "poll_f6224fd72392a80b"
        reissued = httpx.get(f"{service.url}/healthz", headers={"X-Request-Id": posing})
        assert reissued.headers["X-Request-Id"].startswith("req_")
        assert made.startswith("req_") and replaced.headers["x-request-id"].startswith("req_")
        assert made != replaced.headers["x-request-id"]
        # Even answers made by middleware (413) and errors carry the id.
        big = service.api.post("/users", content=b"x" * 100_000, headers={"X-Request-Id": "big-1"})
        assert (big.status_code, big.headers["x-request-id"]) == (413, "big-1")

        rejected = httpx.post(
            f"{service.url}/stripe/webhooks",
            content=b"{}",
            headers={"Stripe-Signature": "t=1,v1=00", "X-Request-Id": "wh-42"},
        )
        assert rejected.status_code == 400
        subscribe(service, emulator, 1)
        user = {"github_user_id": 2, "github_login": "two", "email_address": "two@example.com"}
        assert service.api.post("/users", json=user).is_success
        emulator.control("POST", "faults", {"rate": 1.0, "statuses": [500], "count": 1,
                                            "path_prefix": "/v1/checkout"})  # fmt: skip
        failed = service.api.post(
            "/billing/subscriptions", json={"github_user_id": 2}, headers={"X-Request-Id": "co-9"}
        )
        assert failed.status_code == 502
        set_synced(service.factory, int(time.time()) - 3600)
        Reconciler(service.settings, engine, StripeGateway(service.settings)).drain()
    lines = json_logs()
    by_message: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line)
        by_message.setdefault(line["message"], []).append(line)
    [webhook] = by_message["webhook rejected"]
    assert webhook["request_id"] == "wh-42" and webhook["level"] == "warning"
    [stripe_failure] = by_message["Stripe request failed"]
    assert stripe_failure["request_id"] == "co-9"
    assert stripe_failure["stripe_http_status"] == 500
    [poll] = by_message["poll"]
    assert poll["request_id"].startswith("poll_")
    assert poll["applied"] >= 1 and poll["lag_seconds"] >= 0 and "seconds" in poll
    text = "\n".join(json.dumps(line) for line in lines)
    for secret in SECRETS:
        assert secret not in text
    # No customer payload: neither an email address nor Stripe's object bodies.
    assert "@example.com" not in text
    assert '"metadata"' not in text and "github_login" not in text


def test_no_secret_in_any_log_at_debug(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG (the Stripe SDK, httpx, uvicorn, ours) through sign-up, checkout,
    webhooks, bad tokens and signatures, Stripe failures, polls and a resync."""
    caplog.set_level(logging.DEBUG)
    saved = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    for name in saved:
        if not name.startswith("sqlalchemy"):  # SQL text holds no secret and is very noisy
            logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        with running_service(stripe_settings, engine, reconcile_enabled=True) as service:
            catalog = {e["id"] for e in relevant_events(emulator)}  # made before the endpoint
            endpoint = {"url": f"{service.url}/stripe/webhooks", "secret": WHSEC_OLD}
            emulator.control("POST", "webhook_endpoints", endpoint)
            churn(emulator, subscribe(service, emulator, 1))
            expected = {e["id"] for e in relevant_events(emulator)} - catalog
            wait_until(lambda: delivered_ok(emulator) >= expected, what="deliveries")
            wrong_token = {"Authorization": f"Bearer {ADMIN_TOKEN}x"}
            listing = f"{service.url}/billing/subscriptions?github_user_id=1"
            assert httpx.get(listing, headers=wrong_token).status_code == 401
            assert service.post_webhook(b"{}", sign(b"{}", WHSEC_NEW + "x")).status_code == 400
            emulator.control("POST", "faults", {"rate": 1.0, "statuses": [500, 429], "count": 3,
                                                "retry_after": 0})  # fmt: skip
            service.api.post("/billing/subscriptions", json={"github_user_id": 1})
            emulator.control("DELETE", "faults")
            resync(service.factory, StripeGateway(service.settings))
            time.sleep(0.5)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    assert len(caplog.records) > 50
    for record in caplog.records:
        rendered = f"{record.getMessage()} {vars(record)!r}"
        for secret in SECRETS:
            assert secret not in rendered, (record.name, record.getMessage()[:200])


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_lag_counts_from_the_last_poll_on_a_quiet_account(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, database_url: str
) -> None:
    """The lag (health, metric, status) says how far behind Stripe the database may be, at
    most: an account with no event for hours, polled a moment ago, is not behind by those
    hours (it once counted from the newest event, so an alert on it fired on every quiet
    account), and events that webhooks applied since the last poll do not shorten it (with
    no poller running, nothing says that none was missed)."""
    emulator.reset()  # not even the catalog's events
    assert read_status(engine).lag is None  # never polled: unknown
    Reconciler(stripe_settings, engine, StripeGateway(stripe_settings)).drain()
    status = read_status(engine)
    assert status.last_resync_at is not None and status.cursor is not None
    assert status.lag is not None and status.lag < 60
    # Its newest event two hours old: still polled a moment ago.
    quiet = dataclasses.replace(status, newest_applied=int(status.read_at) - 7200)
    assert quiet.lag is not None and quiet.lag < 60
    # No poll for an hour, webhooks applying events meanwhile: up to an hour behind.
    unpolled = dataclasses.replace(
        quiet, read_at=status.read_at + 3600, newest_applied=int(status.read_at) + 3590
    )
    assert unpolled.lag is not None and unpolled.lag >= 3600
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "reconcile", "--status"],
        env=service_env(database_url, emulator, "auto"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "lag (behind Stripe at most):" in result.stdout and "unknown" not in result.stdout


def test_status_shows_cursor_lag_failed_events_and_leader(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, database_url: str
) -> None:
    with running_service(stripe_settings, engine) as service:
        subscribe(service, emulator, 1)
        set_synced(service.factory, int(time.time()) - 3600)
        # A subscription of a customer made elsewhere, without our metadata: to match it the
        # applier must read the customer from Stripe, and Stripe fails that read.
        customer = emulator.sdk.v1.customers.create(params={"email": "stranger@example.com"})
        price = service.settings.stripe_price_id or ""
        # Its first subscription sets its currency (a `customer.updated`, which would say again
        # that the customer is no user's): the later one changes nothing of the customer.
        emulator.sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": price}]}
        )
        Reconciler(service.settings, engine, StripeGateway(service.settings)).drain()
        # Seen before this database remembered unmatched customers: read when needed.
        with service.factory() as session, session.begin():
            session.execute(delete(UnmatchedStripeCustomer))
        emulator.sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": price}]}
        )
        fault = {"rate": 1.0, "statuses": [500], "path_prefix": f"/v1/customers/{customer.id}"}
        emulator.control("POST", "faults", fault)
        Reconciler(service.settings, engine, StripeGateway(service.settings)).drain()
    status = read_status(engine)
    # The subscription and its first invoice: both need their customer read. Once: not
    # counted failed yet.
    [_, failing] = sorted((p for p in status.pending if p.last_error), key=lambda p: p.object_id)
    assert not status.failed and status.lag is not None and status.lag < 60
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "reconcile", "--status"],
        env=service_env(database_url, emulator, "auto"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "cursor (newest event created): " in out and "never" not in out.split("\n")[0]
    lag_line = next(line for line in out.splitlines() if line.startswith("lag"))
    assert lag_line.split(":")[1].strip().endswith(" s")
    assert "leader:                        none" in out
    assert "(0 failed)" in out
    assert "failed 1x: StripeGatewayError: Stripe api_error" in out
    assert failing.event.id in out


def test_serve_exits_0_on_sigterm(
    emulator: Emulator, tmp_path: Path, stripe_settings: Settings
) -> None:
    port = free_port()
    env = service_env(f"sqlite:///{tmp_path / 'serve.db'}", emulator, "auto")
    env["STRIPE_PRICE_ID"] = stripe_settings.stripe_price_id or ""
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "collab_billing", "serve", "--port", str(port)],
            env=env, cwd=tmp_path, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}",
                           headers={"Authorization": ADMIN_TOKEN}, timeout=30)  # fmt: skip

        def healthy() -> bool:
            try:
                return api.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, what="serve to start")
        service = Service(str(api.base_url).rstrip("/"), api, stripe_settings, None)  # type: ignore[arg-type]
        subscribe(service, emulator, 1)
        wait_until(lambda: any(line["message"] == "poll" for line in read_json_lines(log_path)))
        assert terminate(process, 30) == 0
    finally:
        reap(process)
    lines = read_json_lines(log_path)
    assert any(line.get("request_id", "").startswith("req_") for line in lines)
    for secret in (EMULATOR_KEY, ADMIN_TOKEN, WHSEC_NEW):
        assert secret not in log_path.read_text()


def test_reconcile_exits_0_on_sigterm(emulator: Emulator, tmp_path: Path) -> None:
    log_path = tmp_path / "reconcile.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "collab_billing", "reconcile"],
            env=service_env(f"sqlite:///{tmp_path / 'worker.db'}", emulator, "auto"),
            cwd=tmp_path, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_until(
            lambda: sum(line["message"] == "poll" for line in read_json_lines(log_path)) >= 2,
            what="two polls",
        )
        assert terminate(process, 30) == 0
    finally:
        reap(process)
    polls = [line for line in read_json_lines(log_path) if line["message"] == "poll"]
    assert len({line["request_id"] for line in polls}) == len(polls), "one id per poll"


@pytest.mark.postgres_only
def test_the_leader_shown_is_this_databases(engine: Engine, own_database: str) -> None:
    """Another service's leader on the same PostgreSQL server (its own database) is not this
    one's: advisory locks are per database, and so is the leader shown."""
    from collab_billing.db.engine import make_engine
    from collab_billing.reconcile.leader import LeaderLock, current_holder

    other = make_engine(own_database)
    lock = LeaderLock(other)
    try:
        assert lock.acquire()
        assert current_holder(other).startswith("PostgreSQL backend pid")
        assert current_holder(engine) == "none"
        ours = LeaderLock(engine)
        assert ours.acquire()  # and it does not keep this one's from leading
        ours.release()
    finally:
        lock.release()
        other.dispose()


def test_status_under_a_clock_ahead_of_ours_says_ahead_not_a_negative_age(
    engine: Engine, session_factory: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    """Under `dev` the events' `created` come from the emulator's clock, which runs ahead."""
    with session_factory() as session, session.begin():
        ledger.write_state(session, ledger.CURSOR, int(time.time()) + 3600)
    print_status(engine)
    cursor_line = capsys.readouterr().out.splitlines()[0]
    assert "s ahead of this machine's clock" in cursor_line and "-" not in cursor_line


def test_healthz_metrics_and_status_count_the_same_failed_events(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    session_factory: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An event that failed five times counts as failed everywhere; one that failed once
    (retried seconds later) nowhere yet. `/healthz` counted it at the first failure, the
    metric at the fifth."""
    emulator.price()
    first, second = [Event.from_dict(e) for e in emulator.all_events()[:2]]
    with session_factory() as session, session.begin():
        for _ in range(ledger.MAX_ATTEMPTS):
            ledger.record_pending(session, [first], "obj_failed", "boom", int(time.time()) + 60)
        ledger.record_pending(session, [second], "obj_once", "boom", int(time.time()) + 60)
    with running_service(stripe_settings, engine) as service:
        health = httpx.get(f"{service.url}/healthz").json()["reconciler"]
        scraped = scrape(service.url)
    assert (health["pending_events"], health["failed_events"]) == (2, 1)
    assert value(scraped, "collab_billing_failed_events") == 1
    assert value(scraped, "collab_billing_pending_events") == 2
    print_status(engine)
    assert "pending events: 2 (1 failed)" in capsys.readouterr().out
