"""Bodies that are not strict JSON (NaN, Infinity, numbers that overflow, lone surrogates in a
string or a key, deep nesting, bytes that are not UTF-8) get a 4xx JSON answer on every POST
route, change nothing, and leave the keep-alive connection usable. They were 500s: Python's
`json` accepted them and the 422 answer, echoing the input, could not be written.

The fuzz test is Hypothesis rather than schemathesis: schemathesis generates JSON from the
schema, and strict JSON has no NaN and no lone surrogate."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.models import User
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerThread

POST_ROUTES = ["/users", "/billing/subscriptions", "/billing/subscriptions/manage"]
BAD_BODIES = [
    b'{"github_user_id": NaN, "github_login": "x"}',
    b'{"github_user_id": Infinity, "github_login": "x"}',
    b'{"github_user_id": -Infinity, "github_login": "x"}',
    b'{"github_user_id": 1e400, "github_login": "x"}',
    b'{"github_user_id": 1, "github_login": "\\ud800"}',
    b'{"github_user_id": 1, "github_login": "x", "intent": "a\\udfffb"}',
    b'{"github_user_id": 1, "\\ud800": 1}',
    b"NaN",
    b"[1e400]",
    b'"\\ud800"',
    b"[" * 30_000,
    b'{"github_user_id": 1, "github_login": "\xff\xfe"}',
    b'{"github_user_id": 1, "github_login": "x", "github_user_id": 2}',  # which one?
    b'{"github_login": "x", "github_user_id": 1, "github_login": "y"}',
]


@pytest.fixture
def port(stripe_settings: Settings, engine: Engine) -> Iterator[int]:
    app = create_app(stripe_settings.model_copy(update={"reconcile_enabled": False}), engine)
    with ServerThread(app) as server:
        yield int(server.url.rsplit(":", 1)[1])


def exchange(
    connection: http.client.HTTPConnection, path: str, body: bytes, content_type: str | None
) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.getheader("content-type") or "", response.read()


def count_users(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(User)) or 0)


@pytest.mark.parametrize("content_type", ["application/json", None])
@pytest.mark.parametrize("path", POST_ROUTES)
def test_bodies_that_are_not_strict_json_are_4xx_json(
    port: int, engine: Engine, path: str, content_type: str | None
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for body in BAD_BODIES:
            status, answer_type, answer = exchange(connection, path, body, content_type)
            assert 400 <= status < 500, (body[:60], status, answer[:300])
            assert answer_type == "application/json", (body[:60], answer[:300])
            assert json.loads(answer)["detail"]
        socket_before = connection.sock
        connection.request("GET", "/healthz")
        assert connection.getresponse().read() and connection.sock is socket_before, (
            "the connection was closed after an error answer"
        )
    finally:
        connection.close()
    assert count_users(engine) == 0


# -- fuzz ------------------------------------------------------------------------------------

NOT_STRICT = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", '"\\ud800"', '"x\\udfff"', '"\\udc00y"']
)
FINE = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=8).map(json.dumps),
    st.sampled_from(["true", "false", "null", "1.5", "0", '"cancel"', '"octocat"']),
)
KEYS = st.one_of(
    st.sampled_from(
        ["github_user_id", "github_login", "email_address", "intent", "subscription_id"]
    ).map(json.dumps),
    st.just('"\\ud800"'),
)


def json_text(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """JSON-like text: arrays and objects of `leaves`, written by hand so that the leaves go
    into the text as they are (no encoder would write them)."""
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4).map(lambda items: f"[{','.join(items)}]"),
            st.lists(st.tuples(KEYS, children), max_size=5).map(
                lambda pairs: "{" + ",".join(f"{k}: {v}" for k, v in pairs) + "}"
            ),
        ),
        max_leaves=12,
    )


@st.composite
def bodies_with_a_bad_value(draw: st.DrawFn) -> bytes:
    """An object like the routes take, with one value (at any depth) that is not strict JSON."""
    fields = {"github_user_id": "1", "github_login": '"octocat"', "intent": '"cancel"'}
    name = draw(st.sampled_from([*fields, "subscription_id", "extra"]))
    fields[name] = draw(json_text(NOT_STRICT).filter(lambda text: any(
        token in text for token in ("NaN", "Infinity", "e400", "e999", "\\ud", "\\udc")
    )))  # fmt: skip
    pairs = [f"{json.dumps(k)}: {v}" for k, v in draw(st.permutations(list(fields.items())))]
    return ("{" + ", ".join(pairs) + "}").encode()


@pytest.mark.parametrize("path", POST_ROUTES)
def test_fuzz_every_post_route(
    port: int, engine: Engine, session_factory: sessionmaker[Session], path: str
) -> None:
    with session_factory() as session, session.begin():
        queries.upsert_user(session, 1, "octocat", None)  # so that a body could otherwise pass
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    @given(bad=bodies_with_a_bad_value(), anything=json_text(st.one_of(NOT_STRICT, FINE)))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def check(bad: bytes, anything: str) -> None:
        users_before = all_users(engine)
        status, answer_type, answer = exchange(connection, path, bad, "application/json")
        assert 400 <= status < 500 and answer_type == "application/json", (bad, answer)
        assert all_users(engine) == users_before, bad
        status, answer_type, answer = exchange(
            connection, path, anything.encode(), "application/json"
        )
        assert status < 500 and answer_type == "application/json", (anything, answer)

    try:
        check()
    finally:
        connection.close()


def all_users(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(User).order_by(User.id))]
