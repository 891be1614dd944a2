"""A customer's `currency`: null until its first subscription, then that subscription's; and
Stripe's refusal of a subscription or a Checkout Session in another currency while anything
of the customer's is live in one (src/stripe_emulator/customer_currency.py)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.emulator.conftest import CARD, Api, Control, recurring_price

COMBINE = "You cannot combine currencies on a single customer"


def price_in(client: stripe.StripeClient, currency: str, amount: int = 1800) -> stripe.Price:
    return client.v1.prices.create(
        params={
            "currency": currency,
            "unit_amount": amount,
            "recurring": {"interval": "month"},
            "product_data": {"name": f"Emulator test plan in {currency}"},
        }
    )


def subscribe(client: stripe.StripeClient, customer: str, *prices: str) -> stripe.Subscription:
    items: Any = [{"price": price} for price in prices]
    return client.v1.subscriptions.create(params={"customer": customer, "items": items})


def checkout(client: stripe.StripeClient, customer: str, price: str) -> stripe.checkout.Session:
    return client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": price, "quantity": 1}],
            "success_url": "https://example.com/ok",
        }
    )


def refused(call: Any) -> stripe.InvalidRequestError:
    """The error of `call()`: Stripe's combine-currencies refusal, with no code and no param."""
    with pytest.raises(stripe.InvalidRequestError, match=COMBINE) as caught:
        call()
    assert (caught.value.http_status, caught.value.code, caught.value.param) == (400, None, None)
    return caught.value


def test_the_first_subscription_sets_the_customers_currency(api: Api) -> None:
    client = api.client
    customer = client.v1.customers.create(params=CARD)
    assert customer.currency is None
    sub = subscribe(client, customer.id, price_in(client, "eur").id)
    assert client.v1.customers.retrieve(customer.id).currency == "eur"
    if api.live:
        client.v1.subscriptions.cancel(sub.id)
        client.v1.customers.delete(customer.id)
        return
    [event] = [
        e
        for e in client.v1.events.list(params={"type": "customer.updated"}).data
        if e.data.object["id"] == customer.id
    ]
    assert event.data.object["currency"] == "eur"
    assert event.data.previous_attributes.to_dict() == {"currency": None}


def test_a_subscription_in_another_currency_is_refused_while_one_is_live(api: Api) -> None:
    client = api.client
    customer = client.v1.customers.create(params=CARD)
    dollars = subscribe(client, customer.id, recurring_price(client).id)
    euros = price_in(client, "eur")
    error = refused(lambda: subscribe(client, customer.id, euros.id))
    assert error.user_message is not None and "with currency usd" in error.user_message
    listed = client.v1.subscriptions.list(params={"customer": customer.id}).data
    assert [sub.id for sub in listed] == [dollars.id]  # nothing made
    assert client.v1.customers.retrieve(customer.id).currency == "usd"
    if api.live:
        client.v1.subscriptions.cancel(dollars.id)
        client.v1.customers.delete(customer.id)


@pytest.mark.parametrize("status", ["paused", "unpaid", "past_due"])
def test_a_subscription_not_ended_holds_the_currency_whatever_its_status(
    client: stripe.StripeClient, ctl: Control, status: str
) -> None:
    """What Stripe counts as "active" there is not listed: every status but the ended ones."""
    customer = client.v1.customers.create(params=CARD)
    sub = subscribe(client, customer.id, recurring_price(client).id)
    ctl("POST", f"subscriptions/{sub.id}/status", {"status": status})
    refused(lambda: subscribe(client, customer.id, price_in(client, "eur").id))


def test_an_incomplete_subscription_holds_the_currency(client: stripe.StripeClient) -> None:
    customer = client.v1.customers.create()  # no card: the first invoice is not paid
    sub = subscribe(client, customer.id, recurring_price(client).id)
    assert sub.status == "incomplete"
    refused(lambda: subscribe(client, customer.id, price_in(client, "eur").id))


def test_once_every_subscription_has_ended_another_currency_is_the_customers(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer = client.v1.customers.create(params=CARD)
    first = subscribe(client, customer.id, recurring_price(client).id)
    second = subscribe(client, customer.id, recurring_price(client, 500).id)
    euros = price_in(client, "eur")
    client.v1.subscriptions.cancel(first.id)
    refused(lambda: subscribe(client, customer.id, euros.id))  # the second is live
    client.v1.subscriptions.cancel(second.id)
    assert client.v1.customers.retrieve(customer.id).currency == "usd"  # kept once set
    sub = subscribe(client, customer.id, euros.id)
    assert (sub.status, sub.currency) == ("active", "eur")
    assert client.v1.customers.retrieve(customer.id).currency == "eur"
    updated = client.v1.events.list(params={"type": "customer.updated", "limit": 1}).data[0]
    assert updated.data.previous_attributes.to_dict() == {"currency": "usd"}
    refused(lambda: subscribe(client, customer.id, recurring_price(client).id))


def test_a_pending_proration_of_an_ended_subscription_holds_the_currency(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """Stripe's message names pending invoice items: a seat added mid-period, then the
    subscription canceled at once with `prorate`, leaves its prorations pending (without
    `prorate` nor `invoice_now` they are removed: immediate_cancel.py)."""
    customer = client.v1.customers.create(params=CARD)
    sub = subscribe(client, customer.id, recurring_price(client).id)
    [item] = sub["items"].data
    ctl("POST", "clock/advance", {"seconds": 86_400})
    client.v1.subscriptions.update(sub.id, params={"items": [{"id": item.id, "quantity": 2}]})
    client.v1.subscriptions.cancel(sub.id, params={"prorate": True})
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    refused(lambda: subscribe(client, customer.id, price_in(client, "eur").id))


def test_an_immediate_portal_cancel_removes_the_pending_prorations(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """As the API's cancel without `prorate` nor `invoice_now`: nothing of the old currency is
    left pending, so another currency is the customer's."""
    customer = client.v1.customers.create(params=CARD)
    sub = subscribe(client, customer.id, recurring_price(client).id)
    [item] = sub["items"].data
    ctl("POST", "clock/advance", {"seconds": 86_400})
    client.v1.subscriptions.update(sub.id, params={"items": [{"id": item.id, "quantity": 2}]})
    portal = client.v1.billing_portal.sessions.create(params={"customer": customer.id})
    ctl("POST", f"billing_portal/sessions/{portal.id}/confirm", {"immediately": True})
    euros = subscribe(client, customer.id, price_in(client, "eur").id)
    assert (euros.status, euros.currency) == ("active", "eur")


def test_a_customers_amount_off_discount_sets_and_holds_its_currency(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """ "The default currency for a customer will also be set automatically when ... A
    flat-rate coupon is attached to the customer (not a percent-off coupon)", and then "you
    cannot create a subscription or coupon in another currency for that customer"
    (support.stripe.com/questions/setting-a-customers-default-currency)."""
    customer = client.v1.customers.create(params=CARD)
    percent = client.v1.coupons.create(params={"percent_off": 10, "duration": "forever"})
    ctl("POST", f"customers/{customer.id}/discount", {"coupon": percent.id})
    assert client.v1.customers.retrieve(customer.id).currency is None
    client.v1.customers.delete_discount(customer.id)

    flat = client.v1.coupons.create(
        params={"amount_off": 500, "currency": "eur", "duration": "forever"}
    )
    ctl("POST", f"customers/{customer.id}/discount", {"coupon": flat.id})
    assert client.v1.customers.retrieve(customer.id).currency == "eur"
    updated = client.v1.events.list(params={"type": "customer.updated", "limit": 1}).data[0]
    assert updated.data.previous_attributes.to_dict() == {"currency": None}
    refused(lambda: subscribe(client, customer.id, recurring_price(client).id))
    sub = subscribe(client, customer.id, price_in(client, "eur").id)
    assert (sub.status, sub.currency) == ("active", "eur")


def test_a_flat_rate_coupon_in_another_currency_is_refused_to_the_customer(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer = client.v1.customers.create(params=CARD)
    subscribe(client, customer.id, recurring_price(client).id)
    flat = client.v1.coupons.create(
        params={"amount_off": 500, "currency": "eur", "duration": "forever"}
    )
    answer = ctl.raw("POST", f"customers/{customer.id}/discount", {"coupon": flat.id})
    assert answer.status_code == 400 and COMBINE in answer.json()["error"]["message"]
    assert client.v1.customers.retrieve(customer.id).discount is None
    assert client.v1.coupons.retrieve(flat.id).times_redeemed == 0


def test_a_checkout_session_in_another_currency_is_refused_at_its_creation(api: Api) -> None:
    client = api.client
    customer = client.v1.customers.create(params=CARD)
    sub = subscribe(client, customer.id, recurring_price(client).id)
    euros = price_in(client, "eur")
    refused(lambda: checkout(client, customer.id, euros.id))
    client.v1.subscriptions.cancel(sub.id)
    assert checkout(client, customer.id, euros.id).status == "open"
    if api.live:
        client.v1.customers.delete(customer.id)


def test_an_open_checkout_session_holds_its_currency_until_it_expires(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer = client.v1.customers.create(params=CARD)
    dollars, euros = recurring_price(client), price_in(client, "eur")
    session = checkout(client, customer.id, dollars.id)
    assert client.v1.customers.retrieve(customer.id).currency is None  # only a subscription sets it
    refused(lambda: checkout(client, customer.id, euros.id))
    refused(lambda: subscribe(client, customer.id, euros.id))
    client.v1.checkout.sessions.expire(session.id)
    done = ctl("POST", f"checkout/sessions/{checkout(client, customer.id, euros.id).id}/complete")
    assert client.v1.subscriptions.retrieve(done["subscription"]).currency == "eur"
    assert client.v1.customers.retrieve(customer.id).currency == "eur"


def test_one_subscription_bills_in_one_currency(client: stripe.StripeClient) -> None:
    """Items of two currencies on one new subscription, or one Checkout, are refused as an
    update to one is."""
    customer = client.v1.customers.create(params=CARD)
    dollars, euros = recurring_price(client), price_in(client, "eur")
    with pytest.raises(stripe.InvalidRequestError, match="only supports `eur`") as caught:
        subscribe(client, customer.id, dollars.id, euros.id)
    assert caught.value.param == "items"
    line_items: Any = [{"price": dollars.id, "quantity": 1}, {"price": euros.id, "quantity": 1}]
    with pytest.raises(stripe.InvalidRequestError, match="only supports `eur`") as caught:
        client.v1.checkout.sessions.create(
            params={"mode": "subscription", "customer": customer.id, "line_items": line_items}
        )
    assert caught.value.param == "line_items"
    assert client.v1.subscriptions.list(params={"customer": customer.id}).data == []
    assert client.v1.customers.retrieve(customer.id).currency is None
