"""schemathesis against the app's own OpenAPI schema, over real HTTP: no 5xx, and every
response (status, content type, body) is the one the schema documents.

Operations are driven with Hypothesis directly (`as_strategy`) rather than through
schemathesis' pytest plugin, which does not support pytest 9's node internals yet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.config._checks import (
    POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES,
    PositiveDataAcceptanceConfig,
)
from sqlalchemy import Engine

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.engine import make_session_factory
from tests.conftest import ADMIN_TOKEN
from tests.servers import ServerThread

OPERATIONS = [
    ("POST", "/users"),
    ("POST", "/billing/subscriptions"),
    ("POST", "/billing/subscriptions/manage"),
    ("POST", "/billing/subscriptions/sync"),
    ("GET", "/billing/subscriptions"),
    ("GET", "/billing/prices"),
    ("GET", "/billing/invoices"),
    ("POST", "/billing/usage"),
    ("GET", "/billing/usage"),
    ("PUT", "/billing/preferences"),
    ("GET", "/billing/preferences"),
    ("GET", "/billing/state"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
]


# A well-formed `price` may still not be for sale: the catalog, not the schema, says what is
# sold, so these routes may answer a schema-valid request 422 (naming the field `price`).
CATALOG_CHECKED = {("POST", "/billing/subscriptions"), ("POST", "/billing/subscriptions/manage")}


@pytest.fixture
def api_schema(stripe_settings: Settings, engine: Engine) -> Iterator[schemathesis.BaseSchema]:
    with make_session_factory(engine)() as session, session.begin():
        for github_user_id in (1, 2, 3):
            queries.upsert_user(session, github_user_id, f"user{github_user_id}", None)
    app = create_app(stripe_settings.model_copy(update={"reconcile_enabled": False}), engine)
    with ServerThread(app) as server:
        yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_conforms_to_its_schema(
    api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    if (method, path) in CATALOG_CHECKED:
        api_schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
            expected_statuses=[*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, "422"]
        )

    # A schema-valid usage record may still be refused (422): its user or meter may not exist,
    # and its timestamp must lie within Stripe's window around now, which no schema can say.
    excluded = [positive_data_acceptance] if (method, path) == ("POST", "/billing/usage") else []

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, excluded_checks=excluded
        )
        positive = case.meta is not None and case.meta.generation.mode.is_positive
        if (method, path) in CATALOG_CHECKED and response.status_code == 422 and positive:
            # The catalog refuses a well-formed request whose price is not for sale.
            assert [e["loc"] for e in response.json()["detail"]] == [["body", "price"]]

    check()


def test_every_route_is_covered(api_schema: schemathesis.BaseSchema) -> None:
    documented = {
        (method.upper(), path)
        for path, methods in api_schema.raw_schema["paths"].items()
        for method in methods
    }
    assert documented == {*OPERATIONS, ("POST", "/stripe/webhooks")}
