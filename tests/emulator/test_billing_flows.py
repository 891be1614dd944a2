"""Checkout completion, the portal cancel flow, status moves, the clock, customer deletion:
the objects and exactly the events Stripe emits for each."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Control, months_later, recurring_price


def events_oldest_first(client: stripe.StripeClient, **params: Any) -> list[Any]:
    found = list(client.v1.events.list(params={"limit": 100, **params}).auto_paging_iter())
    return list(reversed(found))


def checkout(client: stripe.StripeClient, **extra: Any) -> stripe.checkout.Session:
    price = recurring_price(client)
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [{"price": price.id, "quantity": 1}],
        "success_url": "https://example.com/ok",
        "cancel_url": "https://example.com/cancel",
        **extra,
    }
    return client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]


def test_checkout_completion_without_customer(client: stripe.StripeClient, ctl: Control) -> None:
    session = checkout(
        client,
        customer_email="new@example.com",
        client_reference_id="77",
        subscription_data={"metadata": {"github_user_id": "77"}},
    )
    assert session.customer is None
    mark = len(events_oldest_first(client))

    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    assert done["status"] == "complete"
    assert done["payment_status"] == "paid"
    assert done["url"] is None
    assert done["customer"].startswith("cus_")
    assert done["subscription"].startswith("sub_")

    events = events_oldest_first(client)[mark:]
    assert [e.type for e in events] == [
        "customer.created",
        "payment_method.attached",
        "customer.updated",  # its currency, set by the subscription
        "customer.subscription.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
        "checkout.session.completed",
    ]
    assert len({e.created for e in events}) == 1  # one second, like Stripe
    assert events[0].data.object.currency is None
    assert events[2].data.object.currency == "usd"
    assert events[2].data.previous_attributes.to_dict() == {"currency": None}
    created, updated = events[3].data.object, events[8]
    assert created.status == "incomplete"
    assert updated.data.object.status == "active"
    card, invoice = events[1].data.object, events[7].data.object
    assert created.default_payment_method == card.id
    assert updated.data.previous_attributes.to_dict() == {
        "status": "incomplete",
        "latest_invoice": None,
    }
    assert updated.data.object.default_payment_method == card.id
    assert updated.data.object.latest_invoice == invoice.id
    assert (invoice.status, invoice.amount_paid, invoice.billing_reason) == (
        "paid",
        2000,
        "subscription_create",
    )
    assert events[0].data.object.email == "new@example.com"
    assert events[9].data.object.subscription == done["subscription"]

    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "active"
    assert sub.metadata.to_dict() == {"github_user_id": "77"}
    assert sub.customer == done["customer"]

    again = ctl.raw("POST", f"checkout/sessions/{session.id}/complete", {})
    assert again.status_code == 400
    assert again.json()["error"]["type"] == "invalid_request_error"


def test_checkout_completion_with_customer_and_trial(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer = client.v1.customers.create(params={"email": "c@example.com"})
    session = checkout(client, customer=customer.id, subscription_data={"trial_period_days": 14})
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    types = [e.type for e in events_oldest_first(client, created={"gte": session.created})]
    assert "customer.created" not in types[1:]
    assert "customer.subscription.created" in types
    assert types[-2:] == ["customer.subscription.updated", "checkout.session.completed"]
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "trialing"
    assert sub.trial_end is not None
    assert done["payment_status"] == "no_payment_required"


def test_checkout_errors_and_expiry(client: stripe.StripeClient, ctl: Control) -> None:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.checkout.sessions.create(
            params={"mode": "subscription", "line_items": [{"price": "price_nope", "quantity": 1}]}
        )
    assert raised.value.http_status == 404
    assert raised.value.param == "line_items[0][price]"
    customer = client.v1.customers.create()
    with pytest.raises(stripe.InvalidRequestError) as raised:
        checkout(client, customer=customer.id, customer_email="x@example.com")
    assert raised.value.http_status == 400
    session = checkout(client)
    expired = client.v1.checkout.sessions.expire(session.id)
    assert expired.status == "expired"
    assert ctl.raw("POST", f"checkout/sessions/{session.id}/complete").status_code == 400
    assert ctl.raw("POST", "checkout/sessions/cs_test_nope/complete").status_code == 404
    items = client.v1.checkout.sessions.line_items.list(session.id)
    assert [item.object for item in items.data] == ["item"]
    assert items.data[0].price.type == "recurring"
    assert items.data[0].amount_total == 2000


def subscribed(client: stripe.StripeClient, ctl: Control) -> tuple[str, str]:
    session = checkout(client, customer_email="p@example.com")
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    return done["customer"], done["subscription"]


def portal(client: stripe.StripeClient, customer: str, sub: str) -> stripe.billing_portal.Session:
    return client.v1.billing_portal.sessions.create(
        params={
            "customer": customer,
            "return_url": "https://example.com/account",
            "flow_data": {
                "type": "subscription_cancel",
                "subscription_cancel": {"subscription": sub},
            },
        }
    )


def test_portal_cancel_at_period_end(client: stripe.StripeClient, ctl: Control) -> None:
    customer, sub_id = subscribed(client, ctl)
    session = portal(client, customer, sub_id)
    assert session.id.startswith("bps_") and session.id in session.url
    assert session.flow is not None and session.flow.type == "subscription_cancel"
    sub = ctl("POST", f"billing_portal/sessions/{session.id}/confirm", {})
    assert sub["cancel_at_period_end"] is True
    period_end = sub["items"]["data"][0]["current_period_end"]
    assert sub["cancel_at"] == period_end
    assert sub["status"] == "active"
    last = client.v1.events.list(params={"limit": 1}).data[0]
    assert last.type == "customer.subscription.updated"
    previous = last.data.previous_attributes.to_dict()
    assert previous["cancel_at_period_end"] is False
    assert previous["cancel_at"] is None

    # At the end of the period the subscription ends, with customer.subscription.deleted.
    ctl("POST", "clock/advance", {"seconds": 31 * 86400})
    ended = client.v1.subscriptions.retrieve(sub_id)
    assert ended.status == "canceled"
    assert ended.ended_at == period_end
    last = client.v1.events.list(params={"limit": 1}).data[0]
    assert last.type == "customer.subscription.deleted"
    assert last.created == period_end


def test_portal_cancel_immediately(client: stripe.StripeClient, ctl: Control) -> None:
    customer, sub_id = subscribed(client, ctl)
    session = portal(client, customer, sub_id)
    sub = ctl("POST", f"billing_portal/sessions/{session.id}/confirm", {"immediately": True})
    assert sub["status"] == "canceled"
    last = client.v1.events.list(params={"limit": 1}).data[0]
    assert last.type == "customer.subscription.deleted"
    assert last.data.object.status == "canceled"
    assert client.v1.subscriptions.retrieve(sub_id).status == "canceled"
    with pytest.raises(stripe.InvalidRequestError):
        portal(client, customer, sub_id)  # nothing left to cancel


def test_portal_session_for_someone_elses_subscription(
    client: stripe.StripeClient, ctl: Control
) -> None:
    _, sub_id = subscribed(client, ctl)
    other = client.v1.customers.create()
    with pytest.raises(stripe.InvalidRequestError) as raised:
        portal(client, other.id, sub_id)
    assert raised.value.http_status == 400


def test_status_moves_emit_updates(client: stripe.StripeClient, ctl: Control) -> None:
    _, sub_id = subscribed(client, ctl)
    moved = ctl("POST", f"subscriptions/{sub_id}/status", {"status": "past_due"})
    assert moved["status"] == "past_due"
    last = client.v1.events.list(params={"limit": 1}).data[0]
    assert last.type == "customer.subscription.updated"
    assert last.data.previous_attributes.to_dict() == {"status": "active"}
    ctl("POST", f"subscriptions/{sub_id}/status", {"status": "paused"})
    types = [e.type for e in client.v1.events.list(params={"limit": 2}).data]
    assert types == ["customer.subscription.paused", "customer.subscription.updated"]
    # The period kept and nothing billed (the default, `now`, bills a new period at once).
    kept: Any = {"billing_cycle_anchor": "unchanged", "proration_behavior": "none"}
    assert client.v1.subscriptions.resume(sub_id, kept).status == "active"
    assert (
        client.v1.events.list(params={"limit": 1}).data[0].type == "customer.subscription.resumed"
    )
    assert ctl.raw("POST", f"subscriptions/{sub_id}/status", {"status": "nope"}).status_code == 400
    ctl("POST", f"subscriptions/{sub_id}/status", {"status": "canceled"})
    assert (
        client.v1.events.list(params={"limit": 1}).data[0].type == "customer.subscription.deleted"
    )
    listed = client.v1.subscriptions.list(params={"status": "canceled"})
    assert [s.id for s in listed.data] == [sub_id]


def test_clock_renews_periods(client: stripe.StripeClient, ctl: Control) -> None:
    _, sub_id = subscribed(client, ctl)
    sub = client.v1.subscriptions.retrieve(sub_id)
    before = sub["items"].data[0]
    assert before.current_period_end == months_later(sub.billing_cycle_anchor, 1)
    wait = before.current_period_end - ctl("GET", "clock")["now"]
    clock = ctl("POST", "clock/advance", {"seconds": wait + 5})
    after = client.v1.subscriptions.retrieve(sub_id)["items"].data[0]
    assert after.current_period_start == before.current_period_end
    assert after.current_period_end == months_later(sub.billing_cycle_anchor, 2)
    assert clock["now"] >= before.current_period_end
    last = client.v1.events.list(params={"limit": 1, "type": "customer.subscription.*"}).data[0]
    assert last.type == "customer.subscription.updated"
    assert "items" in last.data.previous_attributes


def test_update_cancel_at_and_items(client: stripe.StripeClient, ctl: Control) -> None:
    _, sub_id = subscribed(client, ctl)
    sub = client.v1.subscriptions.retrieve(sub_id)
    at = sub["items"].data[0].current_period_start + 10 * 86400
    updated = client.v1.subscriptions.update(sub_id, params={"cancel_at": at})
    assert updated.cancel_at == at and updated.cancel_at_period_end is False
    cleared = client.v1.subscriptions.update(sub_id, params={"cancel_at": ""})
    assert cleared.cancel_at is None
    other = recurring_price(client, 5000)
    first = sub["items"].data[0]
    # An item without an id is added; the others stay (Stripe's `items` are changes).
    added = client.v1.subscriptions.update(sub_id, params={"items": [{"price": other.id}]})
    assert [item.price.id for item in added["items"].data] == [first.price.id, other.id]
    swapped = client.v1.subscriptions.update(
        sub_id, params={"items": [{"id": first.id, "deleted": True}]}
    )
    assert [item.price.id for item in swapped["items"].data] == [other.id]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(
            sub_id, params={"cancel_at": at, "cancel_at_period_end": True}
        )
    client.v1.subscriptions.cancel(sub_id)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.subscriptions.update(sub_id, params={"cancel_at_period_end": True})
    kept = client.v1.subscriptions.update(sub_id, params={"metadata": {"note": "ok"}})
    assert kept.metadata.to_dict() == {"note": "ok"}


def test_deleting_a_customer_cancels_its_subscriptions(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer, sub_id = subscribed(client, ctl)
    client.v1.customers.delete(customer)
    types = [e.type for e in client.v1.events.list(params={"limit": 2}).data]
    assert types == ["customer.deleted", "customer.subscription.deleted"]
    deleted_event = client.v1.events.list(params={"limit": 1}).data[0]
    assert deleted_event.data.object.id == customer
    assert deleted_event.data.object.to_dict().get("deleted") is None  # the customer as it was
    assert client.v1.subscriptions.retrieve(sub_id).status == "canceled"
    gone = client.v1.customers.retrieve(customer).to_dict()
    assert gone == {"id": customer, "object": "customer", "deleted": True}
    # Its subscriptions are still listed by customer: canceled, as Stripe's `status`
    # parameter documents ("including those belonging to deleted customers").
    canceled = client.v1.subscriptions.list(params={"customer": customer, "status": "canceled"})
    assert [sub.id for sub in canceled.data] == [sub_id]
    assert client.v1.subscriptions.list(params={"customer": customer}).data == []


def test_customer_update_event_has_previous_attributes(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create(params={"email": "a@example.com", "metadata": {"a": "1"}})
    client.v1.customers.update(
        customer.id, params={"email": "b@example.com", "metadata": {"b": "2"}}
    )
    event = client.v1.events.list(params={"limit": 1, "type": "customer.updated"}).data[0]
    assert event.data.object.email == "b@example.com"
    assert event.data.previous_attributes.to_dict() == {
        "email": "a@example.com",
        "metadata": {"b": None},
    }
    assert event.request.id is not None and event.request.id.startswith("req_")
    assert event.request.idempotency_key is not None  # the SDK sends one on every POST


def test_open_checkout_sessions_expire_with_time(client: stripe.StripeClient, ctl: Control) -> None:
    session = checkout(client)
    ctl("POST", "clock/advance", {"seconds": 86400 + 1})
    assert client.v1.checkout.sessions.retrieve(session.id).status == "expired"
    last = client.v1.events.list(params={"limit": 1}).data[0]
    assert last.type == "checkout.session.expired"
    assert last.created == session.expires_at


def test_incomplete_subscriptions_expire(client: stripe.StripeClient, ctl: Control) -> None:
    customer = client.v1.customers.create()
    price = recurring_price(client)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "payment_behavior": "default_incomplete",
        }
    )
    assert sub.status == "incomplete"
    ctl("POST", "clock/advance", {"seconds": 24 * 3600})
    assert client.v1.subscriptions.retrieve(sub.id).status == "incomplete_expired"
    ended = client.v1.subscriptions.list(params={"status": "ended"})
    assert [s.id for s in ended.data] == [sub.id]
