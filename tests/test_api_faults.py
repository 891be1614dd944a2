"""The admin API when what it depends on fails: the database down (503 JSON, /healthz fails,
recovery by itself), a Stripe that does not answer (database routes stay fast), a database
that cannot be reached at start, and `serve --workers` on SQLite."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from collab_billing.api.app import create_app
from collab_billing.config import Settings, load_settings
from collab_billing.db.engine import make_engine
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.logs import JsonFormatter, TextFormatter, secret_values
from tests.conftest import ADMIN_TOKEN
from tests.network_cut import network_path_to
from tests.ops_helpers import close_database, wait_until
from tests.servers import ServerThread, free_port
from tests.stripe_helpers import Emulator

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@contextmanager
def serve(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    with (
        ServerThread(app) as server,
        httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as client,
    ):
        yield client


# -- the database goes away and comes back --------------------------------------------------


@pytest.mark.postgres_only
def test_database_down_is_503_json_and_recovers_by_itself(
    settings: Settings, own_database: str
) -> None:
    engine = make_engine(own_database)
    upgrade_to_head(engine)
    try:
        with serve(settings, engine) as api:
            user = {"github_user_id": 1, "github_login": "one"}
            assert api.post("/users", json=user).status_code == 201
            assert api.get("/healthz").status_code == 200

            close_database(own_database, allow=False)
            for _ in range(3):  # the pooled connections are dead, then no new one is allowed
                for response in (
                    api.post("/users", json=user),
                    api.get("/billing/subscriptions", params={"github_user_id": 1}),
                    api.get("/healthz"),
                ):
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"] == "application/json"
                    assert response.json()

            close_database(own_database, allow=True)
            wait_until(lambda: api.get("/healthz").status_code == 200, what="/healthz")
            assert api.post("/users", json=user).status_code == 200
            listing = api.get("/billing/subscriptions", params={"github_user_id": 1})
            assert listing.status_code == 200
    finally:
        engine.dispose()


@pytest.mark.postgres_only
def test_a_database_host_that_vanishes_is_503_within_seconds_and_recovers(
    settings: Settings, own_database: str
) -> None:
    """A host gone without a word (a failover moving its address, a network cut): requests on
    the pool's open connections answer 503 within seconds, not after the kernel's ~15 minutes
    of retransmissions, and the first requests after the network is back are served."""
    with network_path_to(own_database) as path:
        engine = make_engine(path.url)
        upgrade_to_head(engine)
        try:
            with serve(settings, engine) as api:
                user = {"github_user_id": 1, "github_login": "one"}
                assert api.post("/users", json=user).status_code == 201

                def read(_: int) -> tuple[int | str, float]:
                    started = time.monotonic()
                    try:
                        answer = api.get(
                            "/billing/subscriptions", params={"github_user_id": 1}, timeout=40
                        )
                    except httpx.TimeoutException as error:
                        return type(error).__name__, time.monotonic() - started
                    return answer.status_code, time.monotonic() - started

                with ThreadPoolExecutor(8) as pool:  # several open connections in the pool
                    assert {status for status, _ in pool.map(read, range(32))} == {200}
                    path.cut()
                    answers = list(pool.map(read, range(4)))
                assert all(status == 503 and seconds < 25 for status, seconds in answers), answers

                path.heal()
                wait_until(lambda: read(0)[0] == 200, timeout=30, what="a read once healed")
        finally:
            engine.dispose()


# -- Stripe does not answer -----------------------------------------------------------------

STRIPE_LATENCY_SECONDS = 4.0


def test_stripes_rate_limit_is_a_503_with_its_retry_after_not_a_long_wait(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """A 429 was retried after its `Retry-After` five times, past the route's Stripe
    timeout (50 s at 10 s each), then answered 502, holding a Stripe slot all along."""
    settings = stripe_settings.model_copy(update={"api_stripe_timeout_seconds": 1.0})
    with serve(settings, engine) as api:
        assert api.post("/users", json={"github_user_id": 5, "github_login": "five"}).is_success
        faults = {"rate": 1.0, "statuses": [429], "retry_after": 2, "path_prefix": "/v1/customers"}
        emulator.control("POST", "faults", faults)
        started = time.monotonic()
        refused = api.post("/billing/subscriptions", json={"github_user_id": 5})
        elapsed = time.monotonic() - started
        emulator.control("DELETE", "faults")
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "2" and "retry in 2 s" in refused.json()["detail"]
        assert elapsed < 1.5
        assert api.post("/billing/subscriptions", json={"github_user_id": 5}).status_code == 200


def test_a_slow_stripe_does_not_starve_the_database_routes(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """45 checkouts wait on a Stripe that takes seconds to answer: `POST /users` and /healthz
    still answer at once (they shared anyio's 40 threads with the checkouts: `POST /users`
    waited for Stripe). Checkouts beyond the Stripe slots are refused with 503 quickly; those
    in the slots end with the gateway's timeout (502)."""
    settings = stripe_settings.model_copy(
        update={
            "api_stripe_concurrency": 4,
            "api_stripe_queue_seconds": 1.0,
            "api_stripe_timeout_seconds": 1.5,
        }
    )
    with serve(settings, engine) as api:
        buyers = range(100, 145)  # 45 users: one Checkout each (one user's take turns)
        for buyer in buyers:
            body = {"github_user_id": buyer, "github_login": f"u{buyer}"}
            assert api.post("/users", json=body).is_success
        emulator.control(
            "POST",
            "faults",
            {"rate": 0.0, "latency_ms": int(STRIPE_LATENCY_SECONDS * 1000), "path_prefix": "/v1"},
        )
        faults_until = time.monotonic() + STRIPE_LATENCY_SECONDS
        with ThreadPoolExecutor(45) as pool:
            checkouts = [
                pool.submit(api.post, "/billing/subscriptions", json={"github_user_id": buyer})
                for buyer in buyers
            ]
            time.sleep(0.3)  # the checkouts are waiting on Stripe or for a slot
            started = time.monotonic()
            created = api.post("/users", json={"github_user_id": 2, "github_login": "two"})
            health = api.get("/healthz")
            elapsed = time.monotonic() - started
            statuses = [checkout.result().status_code for checkout in checkouts]
        assert created.status_code == 201 and health.status_code == 200
        assert elapsed < 1.0, f"database routes waited {elapsed:.1f} s behind Stripe"
        assert statuses.count(503) >= 45 - 4, statuses
        assert set(statuses) <= {502, 503}
        busy = next(c.result() for c in checkouts if c.result().status_code == 503)
        assert "Stripe" in busy.json()["detail"] and busy.headers["retry-after"]
        # The emulator still finishes the requests it held: let it, before the next test.
        time.sleep(max(0.0, faults_until - time.monotonic()) + 0.5)


# -- at start -------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collab_billing", *args],
        env={**os.environ, "ADMIN_TOKEN": ADMIN_TOKEN, "LOG_FORMAT": "text", **env},
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


UNREACHABLE = "postgresql://billing:hunter2-secret@127.0.0.1:1/billing"


# libpq's other way to give the password: as a parameter.
UNREACHABLE_WITH_PARAMETER = "postgresql://billing@127.0.0.1:1/billing?password=hunter2-secret"


@pytest.mark.parametrize("command", [["migrate"], ["users", "list"], ["reconcile", "--status"]])
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (UNREACHABLE, "postgresql://billing:***@127.0.0.1:1/billing"),
        (UNREACHABLE_WITH_PARAMETER, "postgresql://billing@127.0.0.1:1/billing?password=xxxxx"),
    ],
)
def test_an_unreachable_database_is_one_line_naming_it(
    tmp_path: Path, command: list[str], url: str, shown: str
) -> None:
    result = run_cli(*command, env={"DATABASE_URL": url}, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"DATABASE_URL={shown}" in line
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_serve_waits_for_the_database_then_gives_up_in_one_line(tmp_path: Path) -> None:
    env = {"DATABASE_URL": UNREACHABLE, "DATABASE_STARTUP_WAIT_SECONDS": "1.5"}
    result = run_cli("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("waiting for the database at DATABASE_URL=" in line for line in lines[:-1])
    assert lines[-1].startswith("error: cannot reach the database at DATABASE_URL=")
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/billing.db"}
    result = run_cli("serve", "--workers", "2", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "--workers 2 needs PostgreSQL" in line


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://billing:hunter2-secret@db.internal:5432/billing",
        "postgresql://billing@db.internal:5432/billing?password=hunter2-secret",
    ],
)
def test_the_database_password_is_masked_in_log_lines(url: str) -> None:
    settings = load_settings(database_url=url, admin_token=ADMIN_TOKEN, _env_file=None)
    record = logging.LogRecord(
        "x", logging.WARNING, "", 0, "connect to %s failed", (settings.database_url,), None
    )
    for formatter in (
        JsonFormatter(secret_values(settings)),
        TextFormatter(secret_values(settings)),
    ):
        line = formatter.format(record)
        assert "hunter2-secret" not in line and "db.internal" in line


def test_after_an_internal_error_the_next_request_is_answered(
    stripe_settings: Settings, engine: Engine
) -> None:
    """A 500 (a bug in some route) says `Connection: close`: uvicorn drops the connection
    after it, and a client's next request on that kept-alive connection was reset."""
    app = create_app(stripe_settings.model_copy(update={"reconcile_enabled": False}), engine)

    @app.get("/_bug")
    def bug() -> None:  # a route with a bug, as any may have
        raise RuntimeError("a bug")

    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=10) as client:
        failed = client.get("/_bug")
        assert failed.status_code == 500 and failed.headers["connection"] == "close"
        assert "internal error" in failed.json()["detail"]
        assert client.get("/healthz").status_code == 200


@pytest.mark.postgres_only
def test_a_database_that_refuses_the_url_is_one_line(tmp_path: Path, database_url: str) -> None:
    """A connection option the server does not know is a one-line error, not a trace."""
    result = run_cli("migrate", env={"DATABASE_URL": f"{database_url}?foo=bar"}, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert 'invalid connection option "foo"' in line and "Traceback" not in result.stderr


def test_the_metrics_port_taken_is_one_line(tmp_path: Path, emulator_server: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "DATABASE_URL": f"sqlite:///{tmp_path}/billing.db",
            "STRIPE_API_KEY": "sk_test_x",
            "STRIPE_API_BASE": emulator_server,
        }
        result = run_cli("reconcile", "--once", "--metrics-port", str(port), env=env, cwd=tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in line
