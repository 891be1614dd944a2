"""`POST /users` and the admin authentication rules, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.config import Settings, SettingsError, load_settings
from collab_billing.db.models import User
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerThread


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    with (
        ServerThread(create_app(settings, engine)) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client


def count_users(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(User)) or 0


def test_create_then_update_user(
    api: httpx.Client, auth: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    body = {"github_user_id": 12345, "github_login": "octocat", "email_address": "o@example.com"}
    created = api.post("/users", json=body, headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["github_login"] == "octocat"
    updated = api.post("/users", json={**body, "github_login": "octo-cat"}, headers=auth)
    assert updated.status_code == 200
    assert updated.json()["id"] == created.json()["id"]
    with session_factory() as session:
        user = session.scalars(select(User)).one()
        assert (user.github_user_id, user.github_login) == (12345, "octo-cat")


@pytest.mark.parametrize(
    "body",
    [
        {"github_login": "octocat"},
        {"github_user_id": 1},
        {"github_user_id": "12345", "github_login": "octocat"},
        {"github_user_id": 1.5, "github_login": "octocat"},
        {"github_user_id": -1, "github_login": "octocat"},
        {"github_user_id": 0, "github_login": "octocat"},
        {"github_user_id": 2**63, "github_login": "octocat"},
        {"github_user_id": 2**53, "github_login": "octocat"},
        {"github_user_id": 1, "github_login": "octocat", "admin": True},
        {"github_user_id": 1, "github_login": ""},
        {"github_user_id": 1, "github_login": "x", "email_address": "not-an-email"},
        # Control characters (PostgreSQL cannot store NUL: this was a 500 there).
        {"github_user_id": 1, "github_login": "x", "email_address": "a\u0000b@example.com"},
        {"github_user_id": 1, "github_login": "x", "email_address": "a@exa\u0007mple.com"},
        {"github_user_id": True, "github_login": "octocat"},
        [1, 2],
    ],
)
def test_bad_bodies_are_422_and_change_nothing(
    api: httpx.Client,
    auth: dict[str, str],
    session_factory: sessionmaker[Session],
    body: object,
) -> None:
    response = api.post("/users", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]
    assert count_users(session_factory) == 0


def test_malformed_json_is_a_4xx(api: httpx.Client, auth: dict[str, str]) -> None:
    response = api.post(
        "/users",
        content=b'{"github_user_id": 1,',
        headers={**auth, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "JSON" in response.text or "json" in response.text


def test_oversized_body_is_413(api: httpx.Client, auth: dict[str, str]) -> None:
    body = {"github_user_id": 1, "github_login": "x" * 100_000}
    response = api.post("/users", json=body, headers=auth)
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


def test_oversized_chunked_body_is_413_json(api: httpx.Client, auth: dict[str, str]) -> None:
    """No Content-Length: the limit is found while the body streams in (this was a 400,
    "There was an error parsing the body")."""

    def chunks() -> Iterator[bytes]:
        yield b'{"github_user_id": 1, "github_login": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    headers = {**auth, "Content-Type": "application/json"}
    response = api.post("/users", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "larger than 65536 bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    [ADMIN_TOKEN, f"Bearer {ADMIN_TOKEN}", f"bearer {ADMIN_TOKEN}"],
)
def test_bare_or_bearer_token_is_accepted(api: httpx.Client, header: str) -> None:
    body = {"github_user_id": 7, "github_login": "seven"}
    assert api.post("/users", json=body, headers={"Authorization": header}).status_code == 201


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": ADMIN_TOKEN[:-1]},
        {"Authorization": f"token {ADMIN_TOKEN}x"},
    ],
)
def test_missing_or_wrong_token_is_401_json(
    api: httpx.Client, session_factory: sessionmaker[Session], headers: dict[str, str]
) -> None:
    response = api.post("/users", json={"github_user_id": 7, "github_login": "s"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert "token" in response.json()["detail"]
    assert count_users(session_factory) == 0


def test_healthz_checks_the_database(api: httpx.Client) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "reconciler": {
            "leader": "none",
            "last_complete_poll_at": None,
            "lag_seconds": None,
            "pending_events": 0,
            "failed_events": 0,
        },
    }


def test_healthz_reports_an_unreachable_database(settings: Settings) -> None:
    from collab_billing.db.engine import make_engine

    broken = make_engine("postgresql://nobody@127.0.0.1:1/none", pool_pre_ping=False)
    with ServerThread(create_app(settings, broken)) as server:
        response = httpx.get(f"{server.url}/healthz", timeout=30)
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"


def test_an_update_changes_only_the_fields_sent(api: httpx.Client, auth: dict[str, str]) -> None:
    body = {"github_user_id": 5, "github_login": "five", "email_address": "five@example.com"}
    assert api.post("/users", json=body, headers=auth).status_code == 201
    renamed = api.post("/users", json={"github_user_id": 5, "github_login": "v"}, headers=auth)
    assert renamed.status_code == 200
    assert renamed.json()["email_address"] == "five@example.com", "left out: kept"
    cleared = {"github_user_id": 5, "github_login": "v", "email_address": None}
    assert api.post("/users", json=cleared, headers=auth).json()["email_address"] is None
    described = api.get("/openapi.json").json()["paths"]["/users"]["post"]["description"]
    assert "leaving out `email_address` keeps" in described


def test_concurrent_creates_of_one_user_make_one_row(
    api: httpx.Client, auth: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    """Eight requests at once for each of five new users: one 201 and seven 200 each, never a
    500 (on PostgreSQL the losers of the insert race hit the unique index: UniqueViolation)."""
    users = range(100, 105)
    requests = [user for user in users for _ in range(8)]
    barrier = threading.Barrier(len(requests))

    def create(github_user_id: int) -> int:
        body = {"github_user_id": github_user_id, "github_login": f"u{github_user_id}"}
        barrier.wait()
        return api.post("/users", json=body, headers=auth).status_code

    with ThreadPoolExecutor(len(requests)) as pool:
        statuses = list(pool.map(create, requests))
    for index, _ in enumerate(users):
        assert sorted(statuses[index * 8 : index * 8 + 8]) == [200] * 7 + [201]
    assert count_users(session_factory) == len(users)


# -- the admin token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"\xa0",
        b"\x85",
        b"Bearer \xa0",
        f"Bearer  {ADMIN_TOKEN}".encode(),  # compared exactly: no stripping of the rest
        f"{ADMIN_TOKEN}\xa0".encode("latin-1"),
        f"Bearer {ADMIN_TOKEN}\x85".encode("latin-1"),
        f"\xa0{ADMIN_TOKEN}".encode("latin-1"),
    ],
)
def test_the_token_is_compared_exactly_as_sent(
    api: httpx.Client, session_factory: sessionmaker[Session], header: bytes
) -> None:
    body = {"github_user_id": 7, "github_login": "seven"}
    response = api.post("/users", json=body, headers={"Authorization": header})
    assert response.status_code == 401, response.text
    assert count_users(session_factory) == 0


@pytest.mark.parametrize("token", ["", " ", "\t", "\xa0", "\x85", " padded ", "two words"])
def test_a_blank_or_unsendable_admin_token_is_refused(token: str) -> None:
    with pytest.raises(SettingsError, match="ADMIN_TOKEN"):
        load_settings(admin_token=token, _env_file=None)


@pytest.mark.parametrize("token", ["", "   "])
def test_serve_refuses_a_blank_admin_token_in_one_line(tmp_path: Path, token: str) -> None:
    env = {**os.environ, "ADMIN_TOKEN": token, "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "serve", "--port", "1"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ADMIN_TOKEN" in result.stderr, result.stderr


def test_the_users_add_command_checks_as_the_api_does(
    database_url: str, session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from collab_billing.cli import app as cli

    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    add = ["users", "add", "--github-user-id"]
    for refused, named in [
        ([*add, "50", "--github-login", "bad login"], "--github-login"),
        ([*add, "50", "--github-login", ""], "--github-login"),
        ([*add, "50", "--github-login", "ok", "--email", "notanemail"], "--email-address"),
        ([*add, str(2**53), "--github-login", "ok"], "--github-user-id"),
        ([*add, "0", "--github-login", "ok"], "--github-user-id"),
    ]:
        result = runner.invoke(cli, refused)
        assert result.exit_code == 2, result.output
        [line] = result.output.splitlines()
        assert line.startswith("error: ") and named in line
    with session_factory() as session:
        assert session.scalars(select(User)).all() == []
    result = runner.invoke(cli, [*add, "50", "--github-login", "octo", "--email", "o@x.io"])
    assert result.exit_code == 0 and "created user" in result.output
    listed = runner.invoke(cli, ["users", "list"]).output
    assert listed == "50\tocto\to@x.io\n"
