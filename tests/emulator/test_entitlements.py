"""Entitlements in the emulator, through the official SDK: features, product features, active
entitlements (paged), and the summary event when a customer's features change. Every
response is checked against Stripe's OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe

from tests.emulator.conftest import CARD, Control
from tests.emulator.openapi_schema import Spec, load_spec
from tests.emulator.test_contract import validate_body

SUMMARY = "entitlements.active_entitlement_summary.updated"


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec()


def features(client: stripe.StripeClient, count: int, prefix: str = "f") -> list[str]:
    return [
        client.v1.entitlements.features.create(
            params={"name": f"Feature {n}", "lookup_key": f"{prefix}{n:02d}"}
        ).id
        for n in range(count)
    ]


def plan(client: stripe.StripeClient, feature_ids: list[str]) -> tuple[str, str]:
    product = client.v1.products.create(params={"name": "Entitled plan"})
    for feature in feature_ids:
        client.v1.products.features.create(product.id, params={"entitlement_feature": feature})
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 1000,
            "recurring": {"interval": "month"},
        }
    )
    return product.id, price.id


def active_lookup_keys(client: stripe.StripeClient, customer: str) -> list[str]:
    listed = client.v1.entitlements.active_entitlements.list(
        params={"customer": customer, "limit": 10}
    )
    return sorted(e.lookup_key for e in listed.auto_paging_iter())


def summaries(ctl: Control, customer: str) -> list[dict[str, Any]]:
    events = ctl.http.get("/_emulator/state", params={"events": "true"}).json()["events"]
    found = [e for e in events if e["type"] == SUMMARY]
    return [e["data"]["object"] for e in found if e["data"]["object"]["customer"] == customer]


def test_features_crud_and_errors(client: stripe.StripeClient) -> None:
    created = client.v1.entitlements.features.create(
        params={"name": "Seats", "lookup_key": "seats", "metadata": {"a": "1"}}
    )
    assert created.object == "entitlements.feature" and created.active
    assert client.v1.entitlements.features.retrieve(created.id).lookup_key == "seats"
    renamed = client.v1.entitlements.features.update(created.id, params={"name": "More seats"})
    assert renamed.name == "More seats" and renamed.metadata.to_dict() == {"a": "1"}
    assert [f.id for f in client.v1.entitlements.features.list().data] == [created.id]
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        client.v1.entitlements.features.create(params={"name": "Again", "lookup_key": "seats"})
    client.v1.entitlements.features.update(created.id, params={"active": False})
    assert client.v1.entitlements.features.list().data == []
    archived = client.v1.entitlements.features.list(params={"archived": True})
    assert [f.id for f in archived.data] == [created.id]
    # An archived feature's lookup key may be used again (Stripe's entitlements guide).
    again = client.v1.entitlements.features.create(params={"name": "Again", "lookup_key": "seats"})
    assert again.id != created.id and again.active
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.entitlements.features.retrieve("feat_missing")
    product = client.v1.products.create(params={"name": "P"})
    with pytest.raises(stripe.InvalidRequestError):  # archived: cannot be attached
        client.v1.products.features.create(product.id, params={"entitlement_feature": created.id})


def test_product_features_attach_list_detach(client: stripe.StripeClient) -> None:
    ids = features(client, 3)
    product, _ = plan(client, ids)
    listed = client.v1.products.features.list(product, params={"limit": 2})
    assert len(listed.data) == 2 and listed.has_more
    attached = list(client.v1.products.features.list(product).auto_paging_iter())
    assert sorted(pf.entitlement_feature.id for pf in attached) == sorted(ids)
    first = attached[0]
    assert client.v1.products.features.retrieve(product, first.id).id == first.id
    deleted = client.v1.products.features.delete(product, first.id)
    assert deleted.deleted
    assert len(client.v1.products.features.list(product).data) == 2
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.products.features.delete(product, first.id)


def test_subscription_lifecycle_changes_active_entitlements(
    client: stripe.StripeClient, ctl: Control, spec: Spec
) -> None:
    many = features(client, 25)
    _, rich_price = plan(client, many)
    few = features(client, 2, prefix="g")
    _, poor_price = plan(client, few)
    customer = client.v1.customers.create(params={"email": "ent@example.com", **CARD}).id
    assert active_lookup_keys(client, customer) == []

    subscription = client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"price": rich_price}]}
    )
    assert active_lookup_keys(client, customer) == [f"f{n:02d}" for n in range(25)]
    [summary] = summaries(ctl, customer)
    assert len(summary["entitlements"]["data"]) == 10 and summary["entitlements"]["has_more"]
    page = client.v1.entitlements.active_entitlements.list(params={"customer": customer})
    first = page.data[0].id
    assert client.v1.entitlements.active_entitlements.retrieve(first).id == first

    item = subscription["items"]["data"][0]["id"]
    client.v1.subscriptions.update(
        subscription.id, params={"items": [{"id": item, "price": poor_price}]}
    )
    assert active_lookup_keys(client, customer) == ["g00", "g01"]
    client.v1.subscriptions.cancel(subscription.id)
    assert active_lookup_keys(client, customer) == []
    objects = summaries(ctl, customer)
    assert [len(s["entitlements"]["data"]) for s in objects] == [10, 2, 0]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.entitlements.active_entitlements.list(params={})  # type: ignore[typeddict-item]

    problems = []
    for method, path, status, raw in ctl.emulator.app.state.recorded.take():
        if path.startswith("/v1/"):
            problems += validate_body(spec, method, path, status, json.loads(raw))
    for summary in objects:  # the summary object has no schema of its own in the spec
        for entitlement in summary["entitlements"]["data"]:
            validator = spec.object_validator("entitlements.active_entitlement")
            problems += spec.errors(validator, entitlement)
    assert problems == []
