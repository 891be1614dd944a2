"""Customers, products and prices through the official SDK; errors, idempotency, pagination.

These use no control route, so they also run against Stripe test mode (see conftest.py).
"""

from __future__ import annotations

import uuid

import pytest
import stripe

from stripe_emulator.testing import stripe_client
from tests.emulator.conftest import Api, recurring_price


def unique_email() -> str:
    return f"emu-{uuid.uuid4().hex[:12]}@example.com"


def test_customer_crud_and_metadata(api: Api) -> None:
    client = api.client
    customer = client.v1.customers.create(
        params={"email": unique_email(), "name": "Ada", "metadata": {"github_user_id": "42"}}
    )
    assert customer.id.startswith("cus_")
    assert customer.object == "customer"
    assert customer.livemode is False
    assert customer.metadata.to_dict() == {"github_user_id": "42"}

    updated = client.v1.customers.update(
        customer.id, params={"name": "Ada L.", "metadata": {"github_user_id": "", "x": "1"}}
    )
    assert updated.name == "Ada L."
    assert updated.metadata.to_dict() == {"x": "1"}
    assert client.v1.customers.retrieve(customer.id).name == "Ada L."

    deleted = client.v1.customers.delete(customer.id)
    assert deleted.deleted is True
    again = client.v1.customers.retrieve(customer.id)
    assert again.to_dict().get("deleted") is True
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.update(customer.id, params={"name": "x"})
    assert raised.value.http_status == 404


def test_products_and_recurring_prices(api: Api) -> None:
    client = api.client
    product = client.v1.products.create(params={"name": "Pro", "metadata": {"tier": "pro"}})
    assert product.id.startswith("prod_")
    price = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 1500,
            "recurring": {"interval": "month"},
        }
    )
    assert price.id.startswith("price_")
    assert price.type == "recurring"
    assert price.recurring is not None and price.recurring.interval == "month"
    assert price.unit_amount == 1500
    fetched = client.v1.prices.retrieve(price.id, params={"expand": ["product"]})
    assert fetched.product.id == product.id  # type: ignore[union-attr]
    renamed = client.v1.products.update(product.id, params={"name": "Pro 2"})
    assert renamed.name == "Pro 2"
    listed = client.v1.prices.list(params={"product": product.id})
    assert [p.id for p in listed.data] == [price.id]
    inline = recurring_price(client)
    assert inline.product != product.id


def test_not_found_and_bad_parameters(api: Api) -> None:
    client = api.client
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.retrieve("cus_doesnotexist")
    assert raised.value.http_status == 404
    assert raised.value.code == "resource_missing"
    assert raised.value.param == "id"

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.customers.create(params={"not_a_param": "1"})  # type: ignore[typeddict-unknown-key]
    assert raised.value.http_status == 400
    assert raised.value.code == "parameter_unknown"

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.prices.create(params={"currency": "usd", "unit_amount": 5})  # no product
    assert raised.value.http_status == 400

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.subscriptions.create(params={"items": [{"price": "price_x"}]})  # type: ignore[typeddict-item]
    assert raised.value.http_status == 400
    assert raised.value.code == "parameter_missing"
    assert raised.value.param == "customer"


def test_bad_api_key_is_401(api: Api) -> None:
    if api.live:
        bad = stripe.StripeClient("sk_test_wrong_but_well_formed_0000", max_network_retries=0)
    else:
        # The emulator accepts any sk_test_ key unless started with a specific one.
        bad = stripe_client(api.url, "pk_test_not_a_secret")
    with pytest.raises(stripe.AuthenticationError) as raised:
        bad.v1.customers.list()
    assert raised.value.http_status == 401


def test_idempotency_replay_and_mismatch(api: Api) -> None:
    client = api.client
    key = f"emu-test-{uuid.uuid4()}"
    email = unique_email()
    first = client.v1.customers.create(params={"email": email}, options={"idempotency_key": key})
    second = client.v1.customers.create(params={"email": email}, options={"idempotency_key": key})
    assert second.id == first.id
    assert second.last_response is not None
    assert second.last_response.headers.get("Idempotent-Replayed") == "true"
    with pytest.raises(stripe.IdempotencyError) as raised:
        client.v1.customers.create(
            params={"email": unique_email()}, options={"idempotency_key": key}
        )
    assert raised.value.http_status == 400
    client.v1.customers.delete(first.id)


def test_customer_pagination_both_ways(api: Api) -> None:
    client = api.client
    email = unique_email()
    created = [client.v1.customers.create(params={"email": email}).id for _ in range(5)]
    newest_first = list(reversed(created))

    page1 = client.v1.customers.list(params={"email": email, "limit": 2})
    assert [c.id for c in page1.data] == newest_first[:2]
    assert page1.has_more is True
    page2 = client.v1.customers.list(
        params={"email": email, "limit": 2, "starting_after": page1.data[-1].id}
    )
    assert [c.id for c in page2.data] == newest_first[2:4]
    page3 = client.v1.customers.list(
        params={"email": email, "limit": 2, "starting_after": page2.data[-1].id}
    )
    assert [c.id for c in page3.data] == newest_first[4:]
    assert page3.has_more is False

    back = client.v1.customers.list(
        params={"email": email, "limit": 2, "ending_before": page3.data[0].id}
    )
    assert [c.id for c in back.data] == newest_first[2:4]
    assert back.has_more is True
    top = client.v1.customers.list(
        params={"email": email, "limit": 2, "ending_before": back.data[0].id}
    )
    assert [c.id for c in top.data] == newest_first[:2]
    assert top.has_more is False

    every = [
        c.id
        for c in client.v1.customers.list(params={"email": email, "limit": 2}).auto_paging_iter()
    ]
    assert every == newest_first
    for customer_id in created:
        client.v1.customers.delete(customer_id)


def test_list_limit_bounds(api: Api) -> None:
    for limit in (0, 101):
        with pytest.raises(stripe.InvalidRequestError) as raised:
            api.client.v1.customers.list(params={"limit": limit})
        assert raised.value.http_status == 400
        assert raised.value.param == "limit"


def test_subscription_with_trial_update_and_cancel(api: Api) -> None:
    client = api.client
    customer = client.v1.customers.create(params={"email": unique_email()})
    price = recurring_price(client)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "trial_period_days": 7,
            "metadata": {"k": "v"},
        }
    )
    assert sub.id.startswith("sub_")
    assert sub.status == "trialing"
    item = sub["items"].data[0]
    assert item.id.startswith("si_")
    assert item.current_period_end > item.current_period_start
    assert item.price.id == price.id

    scheduled = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": True})
    assert scheduled.cancel_at_period_end is True
    assert scheduled.cancel_at is not None
    reverted = client.v1.subscriptions.update(sub.id, params={"cancel_at_period_end": False})
    assert reverted.cancel_at_period_end is False
    assert reverted.cancel_at is None

    listed = client.v1.subscriptions.list(params={"customer": customer.id})
    assert [s.id for s in listed.data] == [sub.id]
    canceled = client.v1.subscriptions.cancel(sub.id)
    assert canceled.status == "canceled"
    assert canceled.ended_at is not None
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    every = client.v1.subscriptions.list(params={"customer": customer.id, "status": "all"})
    assert [s.id for s in every.data] == [sub.id]
    client.v1.customers.delete(customer.id)


def test_checkout_and_portal_session_urls_contain_their_ids(api: Api) -> None:
    client = api.client
    customer = client.v1.customers.create(params={"email": unique_email()})
    price = recurring_price(client)
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": price.id, "quantity": 1}],
            "success_url": "https://example.com/success?session={CHECKOUT_SESSION_ID}",
            "cancel_url": "https://example.com/cancel",
            "client_reference_id": "42",
            "metadata": {"github_user_id": "42"},
            "subscription_data": {"metadata": {"github_user_id": "42"}},
        }
    )
    assert session.id.startswith("cs_test_")
    assert session.url is not None and session.id in session.url
    assert session.status == "open"
    assert session.mode == "subscription"
    assert session.client_reference_id == "42"
    assert client.v1.checkout.sessions.retrieve(session.id).id == session.id
    client.v1.customers.delete(customer.id)


def test_event_list_parameter_errors(api: Api) -> None:
    events = api.client.v1.events
    with pytest.raises(stripe.InvalidRequestError):
        events.list(params={"types": [f"customer.t{i}" for i in range(21)]})
    with pytest.raises(stripe.InvalidRequestError):
        events.list(params={"type": "customer.created", "types": ["customer.updated"]})
    with pytest.raises(stripe.InvalidRequestError) as raised:
        events.retrieve("evt_doesnotexist")
    assert raised.value.http_status == 404
