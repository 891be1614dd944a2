"""The commands as a user runs them: `dev` (the whole story over HTTP) and `serve`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import free_port
from tests.stripe_helpers import Emulator


def wait_for(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def start_dev(directory: Path) -> tuple[subprocess.Popen[str], int, int]:
    api_port, emulator_port = free_port(), free_port()
    env = {
        **os.environ,
        "RECONCILE_INTERVAL_SECONDS": "0.3",
        "RECONCILE_SAFETY_INTERVAL_SECONDS": "1",
    }
    env.pop("DATABASE_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "collab_billing", "dev", "--port", str(api_port),
         "--emulator-port", str(emulator_port)],
        cwd=directory, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    return process, api_port, emulator_port


@pytest.fixture
def dev_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    started = start_dev(tmp_path)
    yield started
    process = started[0]
    if process.poll() is None:
        process.kill()
        process.wait()


def read_admin_token(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"admin token:\s+(\S+)", line)
        if match:
            return match.group(1)
    raise AssertionError("dev printed no admin token")


def test_dev_runs_the_whole_story(
    dev_process: tuple[subprocess.Popen[str], int, int], tmp_path: Path
) -> None:
    process, api_port, emulator_port = dev_process
    token = read_admin_token(process)
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{api_port}", headers={"Authorization": token}, timeout=30
    )
    wait_for(lambda: api.get("/healthz").status_code == 200, what="/healthz")
    assert (tmp_path / "collab-billing.db").exists()

    assert api.post("/users", json={"github_user_id": 12345, "github_login": "octocat"}).is_success
    checkout = api.post("/billing/subscriptions", json={"github_user_id": 12345}).json()
    emulator = Emulator(f"http://127.0.0.1:{emulator_port}")
    emulator.complete_checkout(checkout["checkout_session_url"])

    def listing() -> dict[str, Any]:
        return dict(api.get("/billing/subscriptions", params={"github_user_id": 12345}).json())

    wait_for(lambda: listing()["has_active_subscription"], what="the subscription to be active")
    # Where Checkout sends the user back: a page, not a 404 (in production, the app's own).
    session_id = checkout["checkout_session_url"].rsplit("/", 1)[1]
    back = api.get("/billing/success", params={"session_id": session_id})
    assert back.status_code == 200 and back.headers["content-type"].startswith("text/html")
    assert session_id in back.text and "/billing/subscriptions/sync" in back.text
    escaped = api.get("/billing/success", params={"session_id": "<b>"})
    assert "<b>" not in escaped.text and "&lt;b&gt;" in escaped.text
    assert api.get("/billing/cancel").status_code == 200
    # The dev catalog: Pro monthly (the default price) and yearly, Team per seat, and LLM
    # tokens billed by usage.
    prices = api.get("/billing/prices").json()["prices"]
    assert [(p["lookup_key"], p["product_name"], p["usage_type"]) for p in prices] == [
        ("llm-tokens", "LLM tokens", "metered"),
        ("pro-monthly", "Collab Pro", "licensed"),
        ("pro-yearly", "Collab Pro", "licensed"),
        ("team-monthly", "Collab Team", "licensed"),
    ]
    assert listing()["subscriptions"][0]["plan"]["lookup_key"] == "pro-monthly"
    portal = api.post(
        "/billing/subscriptions/manage", json={"github_user_id": 12345, "intent": "cancel"}
    ).json()
    emulator.confirm_portal(portal["billing_portal_session_url"], immediately=True)
    wait_for(lambda: listing()["subscriptions"][0]["status"] == "canceled", what="the cancellation")
    assert listing()["has_active_subscription"] is False

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0

    # Run again in the same folder: the new emulator holds nothing of the last run, so the
    # database starts empty too (its prices and customers named objects gone with it).
    again, api_port, _ = start_dev(tmp_path)
    try:
        assert again.stdout is not None
        assert "dev: emptied sqlite:///collab-billing.db" in again.stdout.readline()
        api.headers["Authorization"] = read_admin_token(again)
        api.base_url = httpx.URL(f"http://127.0.0.1:{api_port}")
        wait_for(lambda: api.get("/healthz").status_code == 200, what="/healthz")
        wait_for(lambda: api.get("/billing/prices").json()["prices"], what="the catalog")
        assert len(api.get("/billing/prices").json()["prices"]) == 4  # this run's alone
        gone = api.get("/billing/subscriptions", params={"github_user_id": 12345})
        assert gone.status_code == 404
    finally:
        again.kill()
        again.wait()


def test_serve_refuses_to_start_without_admin_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ADMIN_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "serve", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "ADMIN_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
