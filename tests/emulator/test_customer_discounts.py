"""A customer's own discount (`customer.discount`, a discount with no `subscription`), through
the official SDK: applied as the Dashboard applies one (the API at this version takes no
`coupon` on a customer), shown on the customer, taken off the invoices of the customer's
subscriptions that have no discount of their own, used up (`once`) and removed
(`DELETE /v1/customers/{id}/discount`), each with its `customer.discount.*` event. Every
response is checked against Stripe's OpenAPI schema at the end."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Control, past_period_end, recurring_price
from tests.emulator.test_billing_flows import events_oldest_first
from tests.emulator.test_meters import _check_recorded_against_spec, make_meter
from tests.emulator.test_usage_invoices import (
    line_for,
    metered_price,
    renewal,
    report,
    subscribe_with_card,
)


def _discount_events(client: stripe.StripeClient) -> list[tuple[str, Any]]:
    return [
        (e.type, e.data.object["subscription"])
        for e in events_oldest_first(client)
        if e.type.startswith("customer.discount.")
    ]


def test_a_customers_discount_applies_to_its_subscriptions_without_one_of_their_own(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl.emulator.app.state.recorded.take()
    plan = recurring_price(client)  # 20.00
    meter = make_meter(client)
    metered = metered_price(client, meter, "10")  # 10 cents a unit
    sub_id = subscribe_with_card(client, [{"price": plan.id}, {"price": metered}])
    customer = str(client.v1.subscriptions.retrieve(sub_id).customer)
    free = client.v1.coupons.create(params={"percent_off": 100, "duration": "forever"})
    with pytest.raises(stripe.InvalidRequestError) as refused:  # not at this API version
        client.v1.customers.update(customer, {"coupon": free.id})  # type: ignore[typeddict-unknown-key]
    assert refused.value.param == "coupon"

    made = ctl("POST", f"customers/{customer}/discount", {"coupon": free.id})
    shown = client.v1.customers.retrieve(customer).discount
    assert shown is not None and shown.id == made["id"] and shown.subscription is None
    assert shown.source.coupon == free.id
    assert _discount_events(client) == [("customer.discount.created", None)]
    refused_twice = ctl.raw("POST", f"customers/{customer}/discount", {"coupon": free.id})
    assert refused_twice.status_code == 400

    report(client, "tokens", customer, "30")  # 3.00
    past_period_end(ctl, client, sub_id)
    first = renewal(client, sub_id)
    assert (first.subtotal, first.total, first.amount_due) == (2300, 0, 0)
    assert [d.discount for d in first.total_discount_amounts or []] == [made["id"]]
    assert [d.amount for d in line_for(first, metered).discount_amounts or []] == [300]

    # A discount of the subscription's own: the customer's no longer applies to it.
    half = client.v1.coupons.create(params={"percent_off": 50, "duration": "forever"})
    client.v1.subscriptions.update(sub_id, {"discounts": [{"coupon": half.id}]})
    report(client, "tokens", customer, "30")
    past_period_end(ctl, client, sub_id)
    second = renewal(client, sub_id)
    assert (second.subtotal, second.total) == (2300, 1150)
    assert [d.discount for d in second.total_discount_amounts or []] != [made["id"]]

    client.v1.subscriptions.update(sub_id, {"discounts": ""})
    removed = client.v1.customers.delete_discount(customer)
    assert (removed.deleted, removed.id, removed.customer) == (True, made["id"], customer)
    assert client.v1.customers.retrieve(customer).discount is None
    with pytest.raises(stripe.InvalidRequestError) as nothing_left:
        client.v1.customers.delete_discount(customer)
    assert (nothing_left.value.http_status, nothing_left.value.code) == (404, "resource_missing")
    past_period_end(ctl, client, sub_id)
    assert renewal(client, sub_id).total == 2000
    assert _discount_events(client)[-1] == ("customer.discount.deleted", None)
    _check_recorded_against_spec(ctl)


def test_a_customers_once_discount_is_used_by_the_first_invoice_that_charges(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer = client.v1.customers.create().id
    once = client.v1.coupons.create(params={"percent_off": 25, "duration": "once"})
    made = ctl("POST", f"customers/{customer}/discount", {"coupon": once.id})
    card = client.v1.payment_methods.attach("pm_card_visa", {"customer": customer})
    plan = recurring_price(client)
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": plan.id}],
            "default_payment_method": card.id,
        }
    )
    assert sub.discounts == []  # inherited at the invoice, not copied onto the subscription
    first = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert (first.total, [d.discount for d in first.total_discount_amounts or []]) == (
        1500,
        [made["id"]],
    )
    assert client.v1.customers.retrieve(customer).discount is None
    assert _discount_events(client) == [
        ("customer.discount.created", None),
        ("customer.discount.deleted", None),
    ]
    past_period_end(ctl, client, sub.id)
    assert renewal(client, sub.id).total == 2000
