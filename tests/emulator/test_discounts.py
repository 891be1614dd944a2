"""Coupons on subscriptions, through the official SDK: a promotion code entered at Checkout
becomes the subscription's discount, `discounts` on create and update, the discount on each
invoice while it lasts (Stripe's invoice-level discount: `subtotal` kept, `total` and
`amount_due` reduced, `total_discount_amounts`, each line's `discount_amounts`, metered usage
lines too), its end after `once` and `repeating` (`customer.discount.deleted`), and its removal
(`discounts=""`, `DELETE /v1/subscriptions/{id}/discount`). Every response is checked against
Stripe's OpenAPI schema at the end."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Control, months_later, past_period_end, recurring_price
from tests.emulator.test_billing_flows import events_oldest_first
from tests.emulator.test_meters import _check_recorded_against_spec, make_meter
from tests.emulator.test_usage_invoices import (
    line_for,
    metered_price,
    renewal,
    report,
    subscribe_with_card,
)


def _discount_amounts(invoice: stripe.Invoice) -> list[tuple[int, str]]:
    return [(d.amount, str(d.discount)) for d in invoice.total_discount_amounts or []]


def _discount_events(client: stripe.StripeClient) -> list[str]:
    return [e.type for e in events_oldest_first(client) if e.type.startswith("customer.disc")]


def test_a_promotion_code_discounts_the_subscription_until_its_months_end(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl.emulator.app.state.recorded.take()
    price = recurring_price(client)  # 20.00
    coupon = client.v1.coupons.create(
        params={"percent_off": 50, "duration": "repeating", "duration_in_months": 2}
    )
    promo = client.v1.promotion_codes.create(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "HALF"}
    )
    customer = client.v1.customers.create(params={"email": "d@example.com"}).id
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer,
            "line_items": [{"price": price.id, "quantity": 3}],
            "success_url": "https://example.com/ok",
            "allow_promotion_codes": True,
        }
    )
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {"promotion_code": "HALF"})
    sub = client.v1.subscriptions.retrieve(done["subscription"], {"expand": ["discounts"]})
    [discount] = sub.discounts
    assert not isinstance(discount, str)
    assert discount.source.coupon == coupon.id and discount.promotion_code == promo.id
    assert discount.subscription == sub.id and discount.customer == customer
    assert discount.end == months_later(discount.start, 2)
    assert client.v1.coupons.retrieve(coupon.id).times_redeemed == 1
    assert client.v1.promotion_codes.retrieve(promo.id).times_redeemed == 1
    assert _discount_events(client) == ["customer.discount.created"]

    first = client.v1.invoices.retrieve(str(sub.latest_invoice))
    assert (first.subtotal, first.total, first.amount_due, first.amount_paid) == (
        6000,
        3000,
        3000,
        3000,
    )
    assert first.discounts == [discount.id]
    assert _discount_amounts(first) == [(3000, discount.id)]
    [line] = first.lines.data
    assert line.amount == 6000
    assert [(d.amount, d.discount) for d in line.discount_amounts or []] == [(3000, discount.id)]

    past_period_end(ctl, client, sub.id)  # one month: still discounted
    assert renewal(client, sub.id).amount_due == 3000
    past_period_end(ctl, client, sub.id)  # two months: the discount has ended
    second = renewal(client, sub.id)
    assert (second.amount_due, second.discounts) == (6000, [])
    assert client.v1.subscriptions.retrieve(sub.id).discounts == []
    assert _discount_events(client) == ["customer.discount.deleted"]  # 30 days kept
    _check_recorded_against_spec(ctl)


def test_discounts_on_create_and_update_apply_to_metered_usage_too(
    client: stripe.StripeClient, ctl: Control
) -> None:
    ctl.emulator.app.state.recorded.take()
    plan = recurring_price(client)
    meter = make_meter(client)
    metered = metered_price(client, meter, "10")  # 10 cents a unit
    once = client.v1.coupons.create(
        params={"amount_off": 500, "currency": "usd", "duration": "once"}
    )
    sub_id = subscribe_with_card(client, [{"price": plan.id}, {"price": metered}])
    client.v1.subscriptions.update(sub_id, {"discounts": [{"coupon": once.id}]})
    sub = client.v1.subscriptions.retrieve(sub_id)
    customer = str(sub.customer)
    [once_discount] = sub.discounts
    assert _discount_events(client) == ["customer.discount.created"]
    added = next(
        e
        for e in events_oldest_first(client)
        if e.type == "customer.subscription.updated"
        and "discounts" in (e.data.previous_attributes or {})
    )
    assert added.data.previous_attributes["discounts"] == []
    assert added.data.object["discounts"] == [once_discount]

    report(client, "tokens", customer, "30")  # 3.00
    past_period_end(ctl, client, sub_id)
    first = renewal(client, sub_id)  # 20.00 + 3.00 - 5.00, spread over the lines
    assert (first.subtotal, first.total, first.amount_due) == (2300, 1800, 1800)
    assert _discount_amounts(first) == [(500, once_discount)]
    shares = [d.amount for line in first.lines.data for d in line.discount_amounts or []]
    assert sorted(shares) == [65, 435]
    assert client.v1.subscriptions.retrieve(sub_id).discounts == []  # `once`: used up
    assert _discount_events(client)[-1] == "customer.discount.deleted"

    free = client.v1.coupons.create(params={"percent_off": 100, "duration": "forever"})
    client.v1.subscriptions.update(sub_id, {"discounts": [{"coupon": free.id}]})
    report(client, "tokens", customer, "70")
    past_period_end(ctl, client, sub_id)
    second = renewal(client, sub_id)
    usage = line_for(second, metered)
    assert usage.amount == 700
    assert [d.amount for d in usage.discount_amounts or []] == [700]
    assert (second.subtotal, second.total, second.amount_due) == (2700, 0, 0)
    assert second.status == "paid"

    client.v1.subscriptions.update(sub_id, {"discounts": ""})
    assert client.v1.subscriptions.retrieve(sub_id).discounts == []
    assert _discount_events(client)[-1] == "customer.discount.deleted"
    _check_recorded_against_spec(ctl)


def test_deleting_a_subscriptions_discount_removes_it_as_an_empty_discounts_does(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """Stripe's "Delete a subscription discount": the discount removed, answered as a
    `deleted_discount`, with `customer.discount.deleted` and then the subscription's
    `customer.subscription.updated`; the next invoice is billed in full."""
    ctl.emulator.app.state.recorded.take()
    sub_id = subscribe_with_card(client, [{"price": recurring_price(client).id}])  # 20.00
    half = client.v1.coupons.create(params={"percent_off": 50, "duration": "forever"})
    client.v1.subscriptions.update(sub_id, {"discounts": [{"coupon": half.id}]})
    [discount] = client.v1.subscriptions.retrieve(sub_id).discounts

    removed = client.v1.subscriptions.delete_discount(sub_id)

    assert (removed.deleted, removed.id, removed.subscription) == (True, discount, sub_id)
    assert removed.source.coupon == half.id
    assert client.v1.subscriptions.retrieve(sub_id).discounts == []
    deleted, updated = events_oldest_first(client)[-2:]
    assert (deleted.type, deleted.data.object["id"]) == ("customer.discount.deleted", discount)
    assert (updated.type, updated.data.object["id"]) == ("customer.subscription.updated", sub_id)
    assert updated.data.previous_attributes["discounts"] == [discount]
    assert updated.data.object["discounts"] == []
    past_period_end(ctl, client, sub_id)
    assert renewal(client, sub_id).total == 2000
    _check_recorded_against_spec(ctl)


def test_deleting_a_subscription_discount_needs_exactly_one_of_its_own(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """None of its own (its customer's applying to it is not its own): a 404, as Stripe's
    "if no discount exists on this subscription". Several: refused, all kept (which one
    Stripe's singular endpoint removes is not documented)."""
    ctl.emulator.app.state.recorded.take()
    sub_id = subscribe_with_card(client, [{"price": recurring_price(client).id}])
    customer = str(client.v1.subscriptions.retrieve(sub_id).customer)
    half = client.v1.coupons.create(params={"percent_off": 50, "duration": "forever"})
    ctl("POST", f"customers/{customer}/discount", {"coupon": half.id})
    with pytest.raises(stripe.InvalidRequestError) as none:
        client.v1.subscriptions.delete_discount(sub_id)
    assert (none.value.http_status, none.value.code) == (404, "resource_missing")
    assert client.v1.customers.retrieve(customer).discount is not None

    tenth = client.v1.coupons.create(params={"percent_off": 10, "duration": "forever"})
    both: Any = [{"coupon": half.id}, {"coupon": tenth.id}]
    client.v1.subscriptions.update(sub_id, {"discounts": both})
    with pytest.raises(stripe.InvalidRequestError) as several:
        client.v1.subscriptions.delete_discount(sub_id)
    assert several.value.http_status == 400
    assert len(client.v1.subscriptions.retrieve(sub_id).discounts) == 2
    _check_recorded_against_spec(ctl)


@pytest.mark.parametrize(
    ("discounts", "param"),
    [
        ([{"coupon": "nope"}], "discounts[0][coupon]"),
        ([{"promotion_code": "promo_nope"}], "discounts[0][promotion_code]"),
    ],
)
def test_unknown_coupons_are_refused(
    client: stripe.StripeClient, discounts: list[dict[str, Any]], param: str
) -> None:
    price = recurring_price(client)
    customer = client.v1.customers.create().id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.create(
            params={"customer": customer, "items": [{"price": price.id}], "discounts": discounts}  # type: ignore[typeddict-item]
        )
    assert refused.value.param == param


def test_an_amount_off_coupon_in_another_currency_is_refused(client: stripe.StripeClient) -> None:
    price = recurring_price(client)
    coupon = client.v1.coupons.create(
        params={"amount_off": 100, "currency": "eur", "duration": "once"}
    )
    customer = client.v1.customers.create().id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.create(
            params={
                "customer": customer,
                "items": [{"price": price.id}],
                "discounts": [{"coupon": coupon.id}],
            }
        )
    assert refused.value.param == "discounts[0][coupon]"


def test_coupons_are_updated_deleted_and_listed_with_their_events(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """A coupon's name and metadata change (`coupon.updated`, with `previous_attributes`);
    deleted, it is gone from the API (404, not listed) and `coupon.deleted` carries it as it
    was, while a subscription's discount made from it stays and keeps discounting."""
    ctl.emulator.app.state.recorded.take()
    coupon = client.v1.coupons.create(params={"percent_off": 25, "duration": "forever"})
    other = client.v1.coupons.create(params={"amount_off": 100, "currency": "usd"})
    assert [c.id for c in client.v1.coupons.list().data] == [other.id, coupon.id]
    renamed = client.v1.coupons.update(coupon.id, {"name": "Quarter", "metadata": {"k": "v"}})
    assert (renamed.name, renamed.percent_off) == ("Quarter", 25)
    assert renamed.metadata.to_dict() == {"k": "v"}
    price = recurring_price(client)
    customer = client.v1.customers.create().id
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [{"price": price.id}],
            "discounts": [{"coupon": coupon.id}],
        }
    )
    deleted = client.v1.coupons.delete(coupon.id)
    assert deleted.deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.coupons.retrieve(coupon.id)
    assert [c.id for c in client.v1.coupons.list().data] == [other.id]
    kept = client.v1.subscriptions.retrieve(sub.id, {"expand": ["discounts"]})
    [discount] = kept.discounts
    assert not isinstance(discount, str) and discount.source.coupon == coupon.id
    events = [e for e in events_oldest_first(client) if e.type.startswith("coupon.")]
    assert [e.type for e in events] == [
        "coupon.created",
        "coupon.created",
        "coupon.updated",
        "coupon.deleted",
    ]
    previous = events[2].data.previous_attributes.to_dict()
    assert previous == {"metadata": {"k": None}, "name": None}
    assert events[3].data.object["id"] == coupon.id
    assert events[3].data.object["percent_off"] == 25
    _check_recorded_against_spec(ctl)
