"""How `serve` runs: worker processes on PostgreSQL (one reconciler leads, metrics for all,
SIGTERM exits 0), the access log switch, and HTTP/1.1 under the uvicorn configuration `serve`
uses (keep-alive, pipelining, `Connection: close`, 413)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.api.server import uvicorn_config
from collab_billing.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.ops_helpers import reap, service_env, terminate, wait_until
from tests.servers import free_port
from tests.stripe_helpers import EMULATOR_KEY, Emulator
from tests.test_freshness import spend


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines written so far (a line being written is left for the next read)."""
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


def metric_lines(url: str, name: str) -> dict[str, float]:
    """`name{pid="..."} value` lines of a scrape, by pid."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    found = {}
    for line in lines:
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('pid="', 1)[1].split('"', 1)[0]] = float(value)
    return found


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.postgres_only  # on SQLite, `serve` refuses several workers (test_api_faults)
def test_serve_with_two_workers(
    emulator: Emulator, tmp_path: Path, stripe_settings: Settings, engine: Engine,
    database_url: str,
) -> None:  # fmt: skip
    """Two workers start; exactly one of them leads the reconciler, which applies what happens
    on Stripe; /metrics covers both; SIGTERM stops everything with exit code 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_env(database_url, emulator)
    env["STRIPE_PRICE_ID"] = stripe_settings.stripe_price_id or ""
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "collab_billing", "serve", "--port", str(port),
             "--workers", "2"],
            env=env, cwd=tmp_path, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        wait_until(lambda: len(metric_lines(url, "collab_billing_reconciler_leader")) == 2
                   if _up(url) else False, timeout=60, what="two workers")  # fmt: skip
        workers = children(process.pid)
        leader = wait_until(
            lambda: sum(metric_lines(url, "collab_billing_reconciler_leader").values()) == 1,
            what="one leader",
        )
        assert leader
        api = httpx.Client(base_url=url, headers={"Authorization": ADMIN_TOKEN}, timeout=30)
        user = {"github_user_id": 7, "github_login": "seven"}
        assert api.post("/users", json=user).status_code == 201
        checkout = api.post("/billing/subscriptions", json={"github_user_id": 7})
        assert checkout.status_code == 200, checkout.text
        emulator.complete_checkout(checkout.json()["checkout_session_url"])
        wait_until(
            lambda: api.get("/billing/subscriptions?github_user_id=7").json()[
                "has_active_subscription"
            ],
            what="the leader's poll",
        )
        # The first poll is a resync, which may write the subscription before the poll's log
        # line (written as it ends).
        polls = wait_until(
            lambda: [line for line in read_json_lines(log_path) if line["message"] == "poll"],
            what="the leader's poll line",
        )
        assert polls, "the leader polled"
        api.close()
        # The reconciler's gauges come from the database: one series, not one per worker.
        scraped = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
        assert sum(line.startswith("collab_billing_stripe_read_budget ") for line in scraped) == 1
        # A worker killed (uvicorn's supervisor starts another) leaves no live gauge behind
        # (an in-progress count or a pending age would otherwise stay at its last value).
        victim = int(min(metric_lines(url, "collab_billing_reconciler_leader")))  # a worker
        shared = metrics_directory(victim)
        assert list(shared.glob(f"gauge_live*_{victim}.db"))
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: len(metric_lines(url, "collab_billing_reconciler_leader")) == 2
            and str(victim) not in metric_lines(url, "collab_billing_reconciler_leader"),
            timeout=30, what="a new worker",
        )  # fmt: skip
        workers = children(process.pid)
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
        assert not list(shared.glob(f"gauge_live*_{victim}.db"))
        assert terminate(process, 60) == 0
    finally:
        reap(process)
    # The workers (and multiprocessing's resource tracker) are gone with the parent.
    wait_until(lambda: all(_gone(pid) for pid in workers), timeout=10, what="the workers to end")
    text = log_path.read_text()
    assert "Traceback" not in text
    assert EMULATOR_KEY not in text and ADMIN_TOKEN not in text
    lines = read_json_lines(log_path)
    assert any(line["message"].startswith("Started parent process") for line in lines)
    assert sum(line["message"] == "Application shutdown complete." for line in lines) == 2


@pytest.mark.postgres_only
@pytest.mark.parametrize("serving", [True, False], ids=["serving", "starting"])
def test_workers_stop_when_their_supervisor_is_killed(
    emulator: Emulator, tmp_path: Path, database_url: str, serving: bool
) -> None:
    """`kill -9` of `serve --workers 2`, once it serves or while its workers are starting:
    the workers stop too (they went on serving, holding the port, so that `serve` could not
    start again), and a new `serve` starts on the port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**service_env(database_url, emulator), "RECONCILE_ENABLED": "false"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "collab_billing", "serve", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--workers", "2"], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if serving:
            wait_until(lambda: _up(url), timeout=60, what="serve")
        # Two workers and multiprocessing's resource tracker.
        workers = wait_until(lambda: len(children(process.pid)) >= 3 and children(process.pid))
        process.kill()
        process.wait()
        wait_until(lambda: all(_gone(pid) for pid in workers), timeout=15, what="the workers")
    finally:
        reap(process)
    again = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_until(lambda: _up(url), timeout=60, what="serve again")
        assert terminate(again, 30) == 0
    finally:
        reap(again)


def metrics_directory(pid: int) -> Path:
    """The metrics directory `serve` made for its workers (in their environment)."""
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [directory] = [v.split(b"=", 1)[1] for v in variables if v.startswith(b"PROMETHEUS_MULTIPROC")]
    return Path(directory.decode())


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("access_log", [True, False])
def test_access_log_switch(
    emulator: Emulator, tmp_path: Path, access_log: bool, database_url: str
) -> None:
    port = free_port()
    env = service_env(database_url, emulator)
    env["RECONCILE_ENABLED"] = "false"
    log_path = tmp_path / "serve.log"
    flag = "--access-log" if access_log else "--no-access-log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "collab_billing", "serve", "--port", str(port), flag],
            env=env, cwd=tmp_path, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), timeout=60, what="serve")
        httpx.get(f"{url}/billing/subscriptions?github_user_id=1", headers={"Authorization": "x"})
        assert terminate(process, 30) == 0
    finally:
        reap(process)
    access = [line for line in read_json_lines(log_path) if line["logger"] == "uvicorn.access"]
    if access_log:
        assert any("/billing/subscriptions" in line["message"] for line in access)
        assert all("color_message" not in line for line in access)
    else:
        assert access == []


def test_serve_without_its_reconciler_exports_the_reconcilers_gauges_from_the_database(
    emulator: Emulator, tmp_path: Path, database_url: str, session_factory: sessionmaker[Session]
) -> None:
    """A `serve` whose reconciler runs apart (RECONCILE_ENABLED=false) answers /metrics with
    the read budget and the lag as the database holds them: it exported zeros of its own, and
    an alert on reads >= budget fired on 0 >= 0."""
    spend(session_factory, 1234)
    port = free_port()
    env = {**service_env(database_url, emulator), "RECONCILE_ENABLED": "false"}
    process = subprocess.Popen(
        [sys.executable, "-m", "collab_billing", "serve", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _up(url), timeout=60, what="serve")
        scraped = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
        assert "collab_billing_stripe_reads_30d 1234.0" in scraped
        assert "collab_billing_stripe_read_budget 8000.0" in scraped
        assert not any(line.startswith("collab_billing_reconciler_lag_seconds") for line in scraped)
        assert terminate(process, 30) == 0
    finally:
        reap(process)


# -- HTTP/1.1 under uvicorn -------------------------------------------------------------------


def raw_exchange(port: int, request: bytes, until: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
            if until and until in data:
                return data


def test_the_protocol_under_uvicorn(settings: Settings, engine: Engine) -> None:
    """Keep-alive, pipelined requests, `Connection: close`, a large answer, HEAD and a 413,
    through the protocol `serve` uses."""
    import threading

    import uvicorn

    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    config = uvicorn_config(app, "127.0.0.1", free_port())
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, what="uvicorn")
        port = config.port
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(50):  # one keep-alive connection
                assert client.get("/healthz").json()["status"] == "ok"
            spec = client.get("/openapi.json")
            assert spec.status_code == 200 and len(spec.content) > 10_000
            assert spec.json()["paths"]["/billing/subscriptions"]
            assert client.head("/healthz").status_code == 405
            big = client.post("/users", content=b"x" * 100_000, headers={"Authorization": "x"})
            assert big.status_code == 413 and big.json()["detail"]
        two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
        pipelined = raw_exchange(port, two, until=b"}HTTP/1.1 200 OK")
        assert pipelined.count(b"HTTP/1.1 200 OK") == 2
        closing = raw_exchange(
            port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert closing.startswith(b"HTTP/1.1 200 OK") and b'"database":"ok"' in closing
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()


def test_serve_help_shows_the_options() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "collab_billing", "serve", "--help"],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=60,
    ).stdout  # fmt: skip
    assert "--workers" in help_text and "--no-access-log" in help_text
