"""Shared fixtures: a real database engine (SQLite or PostgreSQL) with clean tables per test,
and real HTTP servers (uvicorn) on random ports.

`TEST_DATABASE_URL` selects the engine; unset, each session uses a SQLite file in a temp dir.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings, load_settings
from collab_billing.db.engine import is_sqlite, make_engine, make_session_factory
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.db.models import Base
from tests.stripe_helpers import EMULATOR_KEY, Emulator

ADMIN_TOKEN = "test-admin-token-5f1c"


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


@pytest.fixture(scope="session")
def migrated_engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


RESTART_SEQUENCES = "SELECT setval(oid::regclass, 1, false) FROM pg_class WHERE relkind = 'S'"


def clear_tables(engine: Engine) -> None:
    tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as connection:
        for name in tables:
            connection.execute(text(f"DELETE FROM {name}"))
        if not is_sqlite(engine):
            # Ids start again at 1, as SQLite's do. Not TRUNCATE: it makes every table's files
            # anew, ~60-100 ms a call against ~4 for the few rows a test leaves.
            connection.execute(text(RESTART_SEQUENCES))


@pytest.fixture
def engine(migrated_engine: Engine) -> Engine:
    """The migrated engine, with every table emptied before the test."""
    clear_tables(migrated_engine)
    return migrated_engine


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return load_settings(database_url=database_url, admin_token=ADMIN_TOKEN, _env_file=None)


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def uses_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[str]:
    from stripe_emulator.server import start_in_thread

    with start_in_thread(port=0) as running:
        yield running.url


@pytest.fixture
def emulator(emulator_server: str) -> Iterator[Emulator]:
    """The emulator, emptied before the test."""
    emulator = Emulator(emulator_server)
    emulator.reset()
    yield emulator
    emulator.http.close()


@pytest.fixture
def stripe_settings(settings: Settings, emulator: Emulator) -> Settings:
    """Settings for a service that talks to the emulator and sells one price."""
    return settings.model_copy(
        update={
            "stripe_api_key": SecretStr(EMULATOR_KEY),
            "stripe_api_base": emulator.url,
            "stripe_price_id": emulator.price(),
            "stripe_max_network_retries": 0,
            "stripe_requests_per_second": 1000.0,
            "reconcile_interval_seconds": 0.2,
            "reconcile_safety_interval_seconds": 1.0,
        }
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if (os.environ.get("TEST_DATABASE_URL") or "").startswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL: set TEST_DATABASE_URL")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def own_database(database_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own (it is closed to connections mid-test)."""
    name = f"collab_billing_down_{secrets.token_hex(4)}"
    admin = make_engine(
        make_url(database_url).set(database="postgres").render_as_string(hide_password=False),
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true"))
            connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
