"""Plans, seats and trials in the emulator, through the official SDK: Checkout with a quantity
and a card-less trial, trial expiry into `active` or `canceled`, item price and quantity
updates, `trial_end=now`, the portal's update and payment method flows, lookup keys."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Control, months_later, recurring_price
from tests.emulator.test_billing_flows import events_oldest_first

DAY = 86_400


def _checkout(client: stripe.StripeClient, price: str, **extra: Any) -> stripe.checkout.Session:
    customer = client.v1.customers.create(params={"email": "t@example.com"})
    params: dict[str, Any] = {
        "mode": "subscription",
        "customer": customer.id,
        "line_items": [{"price": price, "quantity": 3}],
        "success_url": "https://example.com/ok?session_id={CHECKOUT_SESSION_ID}",
        **extra,
    }
    return client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]


def _subscribed(client: stripe.StripeClient, ctl: Control, price: str) -> stripe.Subscription:
    """A Checkout of `price` (3 seats), completed: its subscription."""
    session = _checkout(client, price)
    completed = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    return client.v1.subscriptions.retrieve(completed["subscription"])


def _cardless_trial(client: stripe.StripeClient, price: str) -> stripe.checkout.Session:
    return _checkout(
        client,
        price,
        payment_method_collection="if_required",
        subscription_data={
            "trial_period_days": 7,
            "trial_settings": {"end_behavior": {"missing_payment_method": "cancel"}},
        },
    )


def test_checkout_with_seats_makes_a_subscription_of_that_quantity(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    session = _checkout(client, price.id)
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "active"
    assert sub["items"].data[0].quantity == 3
    assert sub.default_payment_method is not None  # Checkout took a card


def _completed_without_card(client: stripe.StripeClient, ctl: Control) -> dict[str, Any]:
    """A card-less trial's Checkout, completed without a card."""
    session = _cardless_trial(client, recurring_price(client).id)
    done: dict[str, Any] = ctl("POST", f"checkout/sessions/{session.id}/complete", {"card": False})
    return done


def test_cardless_trial_ends_canceled_without_a_card(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    session = _cardless_trial(client, price.id)
    assert session.payment_method_collection == "if_required"
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {"card": False})
    assert done["payment_status"] == "no_payment_required"
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert sub.status == "trialing"
    assert sub.default_payment_method is None
    assert sub.trial_settings.end_behavior.missing_payment_method == "cancel"

    ctl("POST", "clock/advance", {"seconds": 7 * DAY + 1})
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert ended.status == "canceled"
    assert ended.cancellation_details is not None
    assert ended.cancellation_details.reason == "cancellation_requested"
    deleted = events_oldest_first(client, type="customer.subscription.deleted")
    assert [event.data.object.id for event in deleted] == [sub.id]


def test_cardless_trial_ends_active_once_a_card_is_added_in_the_portal(
    client: stripe.StripeClient, ctl: Control
) -> None:
    done = _completed_without_card(client, ctl)
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": done["customer"], "flow_data": {"type": "payment_method_update"}}
    )
    assert portal.flow is not None and portal.flow.type == "payment_method_update"
    added = ctl("POST", f"billing_portal/sessions/{portal.id}/confirm", {})
    card = added["subscriptions"][0]["default_payment_method"]
    assert card.startswith("pm_")
    # The flow's documented effect: the customer's default for invoices.
    customer = client.v1.customers.retrieve(done["customer"])
    assert customer.invoice_settings.default_payment_method == card

    ctl("POST", "clock/advance", {"seconds": 7 * DAY + 1})
    assert client.v1.subscriptions.retrieve(done["subscription"]).status == "active"


def test_cardless_trial_ends_active_with_the_customers_default_card(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """A card set as the customer's invoice default (not the subscription's) is charged."""
    done = _completed_without_card(client, ctl)
    card = client.v1.payment_methods.attach("pm_card_visa", {"customer": done["customer"]})
    client.v1.customers.update(
        done["customer"], {"invoice_settings": {"default_payment_method": card.id}}
    )
    ctl("POST", "clock/advance", {"seconds": 7 * DAY + 1})
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    assert (sub.status, sub.default_payment_method) == ("active", None)


def test_a_card_is_required_unless_checkout_allows_skipping_it(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    session = _checkout(client, price.id, subscription_data={"trial_period_days": 7})
    refused = ctl.raw("POST", f"checkout/sessions/{session.id}/complete", {"card": False})
    assert refused.status_code == 400


def test_item_price_and_quantity_update_keeps_the_item_and_ends_the_trial_now(
    client: stripe.StripeClient, ctl: Control
) -> None:
    monthly, yearly = recurring_price(client), recurring_price(client, 20_000)
    session = _checkout(client, monthly.id, subscription_data={"trial_period_days": 7})
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub.id,
        params={
            "items": [{"id": item.id, "price": yearly.id, "quantity": 5}],
            "proration_behavior": "create_prorations",
            "trial_end": "now",
        },
    )
    new_item = updated["items"].data[0]
    assert (new_item.id, new_item.price.id, new_item.quantity) == (item.id, yearly.id, 5)
    assert updated.status == "active"
    event = events_oldest_first(client, type="customer.subscription.updated")[-1]
    previous = event.data.previous_attributes.to_dict()
    assert previous["status"] == "trialing"
    assert previous["items"]["data"][0]["price"]["id"] == monthly.id
    assert previous["items"]["data"][0]["quantity"] == 3

    bad = ctl.v1(
        "POST",
        f"subscriptions/{sub.id}",
        data={"proration_behavior": "sometimes"},
    )
    assert bad.status_code == 400


def test_a_trial_is_extended_by_a_new_trial_end(client: stripe.StripeClient, ctl: Control) -> None:
    """`trial_end` as a time moves the trial's end and its period's; it was ignored, with any
    value ("abc" too)."""
    session = _checkout(
        client, recurring_price(client).id, subscription_data={"trial_period_days": 5}
    )
    sub = client.v1.subscriptions.retrieve(
        ctl("POST", f"checkout/sessions/{session.id}/complete", {})["subscription"]
    )
    later = sub.trial_end + 15 * DAY
    extended = client.v1.subscriptions.update(sub.id, params={"trial_end": later})
    assert (extended.status, extended.trial_end) == ("trialing", later)
    assert extended["items"].data[0].current_period_end == later
    event = events_oldest_first(client, type="customer.subscription.updated")[-1]
    assert event.data.previous_attributes.to_dict()["trial_end"] == sub.trial_end
    for bad in ("abc", str(sub.created - 1)):
        refused = ctl.v1("POST", f"subscriptions/{sub.id}", data={"trial_end": bad})
        assert refused.status_code == 400, bad
    ctl("POST", "clock/advance", {"seconds": 6 * DAY})
    assert client.v1.subscriptions.retrieve(sub.id).status == "trialing"  # not at the old end


def test_a_trials_end_is_announced_three_days_before_and_when_ended_now(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """`customer.subscription.trial_will_end`: three days before the end (again for a new
    end), and in the second that `trial_end=now` ends a trial; never twice for one end."""
    session = _checkout(
        client, recurring_price(client).id, subscription_data={"trial_period_days": 7}
    )
    sub = client.v1.subscriptions.retrieve(
        ctl("POST", f"checkout/sessions/{session.id}/complete", {})["subscription"]
    )

    def warnings() -> list[Any]:
        return events_oldest_first(client, type="customer.subscription.trial_will_end")

    ctl("POST", "clock/advance", {"seconds": 4 * DAY - 60})
    assert warnings() == []
    ctl("POST", "clock/advance", {"seconds": 2 * DAY})
    [first] = warnings()
    assert first.created == sub.trial_end - 3 * DAY
    assert (first.data.object.id, first.data.object.status) == (sub.id, "trialing")
    assert client.v1.subscriptions.retrieve(sub.id).status == "trialing"  # not renewed early
    later = sub.trial_end + 10 * DAY
    client.v1.subscriptions.update(sub.id, params={"trial_end": later})
    ctl("POST", "clock/advance", {"seconds": 9 * DAY})
    assert [event.created for event in warnings()] == [first.created, later - 3 * DAY]

    ended = client.v1.subscriptions.update(sub.id, params={"trial_end": "now"})
    last = warnings()[-1]
    assert (len(warnings()), last.created) == (3, ended["items"].data[0].current_period_start)
    ctl("POST", "clock/advance", {"seconds": 10 * DAY})  # within Stripe's 30 days of events
    assert len(warnings()) == 3


def test_two_items_of_one_price_are_refused(client: stripe.StripeClient, ctl: Control) -> None:
    """Stripe keeps one item a price (its seats are the quantity): a second is a 400."""
    price = recurring_price(client)
    sub = _subscribed(client, ctl, price.id)
    [item] = sub["items"].data
    with pytest.raises(stripe.InvalidRequestError, match="multiple subscription items"):
        client.v1.subscriptions.update(
            sub.id, params={"items": [{"id": item.id}, {"price": price.id}]}
        )
    with pytest.raises(stripe.InvalidRequestError, match="multiple subscription items"):
        client.v1.subscriptions.create(
            params={"customer": sub.customer, "items": [{"price": price.id}] * 2}  # type: ignore[typeddict-item]
        )
    assert len(client.v1.subscriptions.retrieve(sub.id)["items"].data) == 1


def test_an_item_in_another_currency_is_refused(client: stripe.StripeClient, ctl: Control) -> None:
    """A subscription bills in one currency: an update or a portal plan change to a price of
    another is a 400, and nothing changes."""
    sub = _subscribed(client, ctl, recurring_price(client).id)
    [item] = sub["items"].data
    euros = client.v1.prices.create(
        params={
            "currency": "eur",
            "unit_amount": 1800,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Emulator test plan, in euros"},
        }
    )
    with pytest.raises(stripe.InvalidRequestError, match="only supports `eur`"):
        client.v1.subscriptions.update(
            sub.id, params={"items": [{"id": item.id, "price": euros.id}]}
        )
    flow = {
        "type": "subscription_update_confirm",
        "subscription_update_confirm": {
            "subscription": sub.id,
            "items": [{"id": item.id, "price": euros.id}],
        },
    }
    with pytest.raises(stripe.InvalidRequestError, match="only supports `eur`"):
        client.v1.billing_portal.sessions.create(
            params={"customer": str(sub.customer), "flow_data": flow}  # type: ignore[typeddict-item]
        )
    [kept] = client.v1.subscriptions.retrieve(sub.id)["items"].data
    assert kept.price.id == item.price.id


def test_a_price_of_an_archived_product_is_not_sold(client: stripe.StripeClient) -> None:
    """The price still shows `active`, but Checkout refuses it (stripe-node#2131)."""
    price = recurring_price(client)
    client.v1.products.update(str(price.product), params={"active": False})
    assert client.v1.prices.retrieve(price.id).active
    with pytest.raises(stripe.InvalidRequestError, match="inactive product") as refused:
        _checkout(client, price.id)
    assert refused.value.param == "line_items[0][price]"


def test_an_item_is_removed_by_deleted(client: stripe.StripeClient, ctl: Control) -> None:
    first, second = recurring_price(client), recurring_price(client, 500)
    customer = client.v1.customers.create(
        params={
            "payment_method": "pm_card_visa",
            "invoice_settings": {"default_payment_method": "pm_card_visa"},
        }
    )
    sub = client.v1.subscriptions.create(
        params={"customer": customer.id, "items": [{"price": first.id}, {"price": second.id}]}
    )
    kept, gone = sub["items"].data
    updated = client.v1.subscriptions.update(
        sub.id, params={"items": [{"id": gone.id, "deleted": True}]}
    )
    assert [item.id for item in updated["items"].data] == [kept.id]
    last = ctl.v1(
        "POST",
        f"subscriptions/{sub.id}",
        data={"items[0][id]": kept.id, "items[0][deleted]": "true"},
    )
    assert last.status_code == 400


def test_portal_update_confirm_flow_applies_the_change_on_confirmation(
    client: stripe.StripeClient, ctl: Control
) -> None:
    monthly, team = recurring_price(client), recurring_price(client, 900)
    session = _checkout(client, monthly.id, subscription_data={"trial_period_days": 7})
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    sub = client.v1.subscriptions.retrieve(done["subscription"])
    item = sub["items"].data[0]
    portal = client.v1.billing_portal.sessions.create(
        params={
            "customer": done["customer"],
            "flow_data": {
                "type": "subscription_update_confirm",
                "subscription_update_confirm": {
                    "subscription": sub.id,
                    "items": [{"id": item.id, "price": team.id, "quantity": 4}],
                },
            },
        }
    )
    assert portal.flow is not None
    confirm = portal.flow.subscription_update_confirm
    assert confirm is not None and confirm["items"][0].price == team.id
    assert client.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == monthly.id

    changed = ctl("POST", f"billing_portal/sessions/{portal.id}/confirm", {})
    assert changed["items"]["data"][0]["price"]["id"] == team.id
    assert changed["items"]["data"][0]["quantity"] == 4
    assert changed["status"] == "active"  # the portal's default trial_update_behavior=end_trial

    update_portal = client.v1.billing_portal.sessions.create(
        params={
            "customer": done["customer"],
            "flow_data": {
                "type": "subscription_update",
                "subscription_update": {"subscription": sub.id},
            },
        }
    )
    picked = ctl("POST", f"billing_portal/sessions/{update_portal.id}/confirm", {"quantity": 2})
    assert picked["items"]["data"][0]["quantity"] == 2


def test_portal_update_confirm_refuses_an_item_of_another_subscription(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    done = ctl("POST", f"checkout/sessions/{_checkout(client, price.id).id}/complete", {})
    response = ctl.v1(
        "POST",
        "billing_portal/sessions",
        data={
            "customer": done["customer"],
            "flow_data[type]": "subscription_update_confirm",
            "flow_data[subscription_update_confirm][subscription]": done["subscription"],
            "flow_data[subscription_update_confirm][items][0][id]": "si_nope",
            "flow_data[subscription_update_confirm][items][0][price]": price.id,
        },
    )
    assert response.status_code == 400


def test_lookup_keys_filter_and_transfer(client: stripe.StripeClient) -> None:
    first = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 500,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Pro"},
            "lookup_key": "pro-monthly",
        }
    )
    found = client.v1.prices.list(params={"lookup_keys": ["pro-monthly"]})
    assert [price.id for price in found.data] == [first.id]
    params: dict[str, Any] = {
        "currency": "usd",
        "unit_amount": 700,
        "recurring": {"interval": "month"},
        "product": first.product,
        "lookup_key": "pro-monthly",
    }
    try:
        client.v1.prices.create(params=params)
        raise AssertionError("a second price took a lookup key in use")
    except stripe.InvalidRequestError as error:
        assert error.param == "lookup_key"
    second = client.v1.prices.create(params={**params, "transfer_lookup_key": True})
    found = client.v1.prices.list(params={"lookup_keys": ["pro-monthly"]})
    assert [price.id for price in found.data] == [second.id]
    assert client.v1.prices.retrieve(first.id).lookup_key is None


def test_checkout_records_tax_and_promotion_code_settings(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    session = _checkout(
        client,
        price.id,
        allow_promotion_codes=True,
        automatic_tax={"enabled": True},
        billing_address_collection="required",
        tax_id_collection={"enabled": True},
        customer_update={"address": "auto", "name": "auto"},
    )
    assert session.allow_promotion_codes is True
    assert session.automatic_tax.enabled is True
    assert session.billing_address_collection == "required"
    assert session.tax_id_collection is not None and session.tax_id_collection.enabled is True


@pytest.mark.parametrize(
    ("update", "without_customer", "param"),
    [
        ({"address": "bogus"}, False, "customer_update[address]"),
        ({"name": "auto", "phone": "auto"}, False, "customer_update[phone]"),
        ({"name": "auto"}, True, "customer_update"),
    ],
)
def test_customer_update_is_checked_not_ignored(
    client: stripe.StripeClient, update: dict[str, str], without_customer: bool, param: str
) -> None:
    """Only with `customer`, and each of address, name, shipping `auto` or `never`."""
    price = recurring_price(client)
    extra: dict[str, Any] = {"customer_update": update}
    if without_customer:
        extra |= {"customer": None, "customer_email": "t@example.com"}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _checkout(client, price.id, **extra)
    assert refused.value.param == param


def test_deleted_catalog_objects_are_gone_with_their_events(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    refused = ctl.v1("DELETE", f"products/{price.product}")
    assert refused.status_code == 400  # it has a price
    deleted = ctl("POST", f"prices/{price.id}/delete", {})
    assert deleted["id"] == price.id
    assert ctl.v1("GET", f"prices/{price.id}").status_code == 404
    assert price.id not in [p.id for p in client.v1.prices.list().data]
    gone = client.v1.products.delete(str(price.product))
    assert gone.deleted is True
    assert ctl.v1("GET", f"products/{price.product}").status_code == 404
    types = [event.type for event in events_oldest_first(client)]
    assert types[-2:] == ["price.deleted", "product.deleted"]


def test_a_deleted_prices_lookup_key_is_free_again(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """It was held by the deleted price forever: a new price could not take it."""
    first = recurring_price(client)
    client.v1.prices.update(first.id, params={"lookup_key": "pro-monthly"})
    ctl("POST", f"prices/{first.id}/delete", {})
    second = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 1000,
            "recurring": {"interval": "month"},
            "product_data": {"name": "Pro"},
            "lookup_key": "pro-monthly",
        }
    )
    assert second.lookup_key == "pro-monthly"


def test_hosted_pages_offer_the_trial_without_card_and_the_flows(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price, other = recurring_price(client), recurring_price(client, 900)
    session = _cardless_trial(client, price.id)
    page = ctl.http.get(f"/_emulator/pages/checkout/{session.id}")
    assert "Start trial without a card" in page.text
    done = ctl.http.post(f"/_emulator/pages/checkout/{session.id}", data={"action": "no_card"})
    assert done.status_code == 303
    sub = client.v1.subscriptions.list(params={"customer": str(session.customer)}).data[0]
    assert (sub.status, sub.default_payment_method) == ("trialing", None)

    portal = client.v1.billing_portal.sessions.create(
        params={
            "customer": str(session.customer),
            "flow_data": {
                "type": "subscription_update_confirm",
                "subscription_update_confirm": {
                    "subscription": sub.id,
                    "items": [{"id": sub["items"].data[0].id, "price": other.id}],
                },
            },
        }
    )
    page = ctl.http.get(f"/_emulator/pages/billing_portal/{portal.id}")
    assert "Confirm the change" in page.text and "Cancel now" not in page.text
    ctl.http.post(f"/_emulator/pages/billing_portal/{portal.id}", data={"action": "update"})
    assert client.v1.subscriptions.retrieve(sub.id)["items"].data[0].price.id == other.id


def test_a_promotion_code_applies_at_checkout(client: stripe.StripeClient, ctl: Control) -> None:
    price = recurring_price(client)  # 20.00
    coupon = client.v1.coupons.create(params={"percent_off": 25, "duration": "once"})
    promo = client.v1.promotion_codes.create(
        params={"promotion": {"type": "coupon", "coupon": coupon.id}, "code": "LAUNCH25"}
    )
    assert promo.code == "LAUNCH25" and promo.active
    found = client.v1.promotion_codes.list(params={"code": "launch25"}).data
    assert [p.id for p in found] == [promo.id]

    refused = _checkout(client, price.id)  # promotion codes not allowed
    response = ctl.raw(
        "POST", f"checkout/sessions/{refused.id}/complete", {"promotion_code": "LAUNCH25"}
    )
    assert response.status_code == 400

    session = _checkout(client, price.id, allow_promotion_codes=True)
    wrong = ctl.raw("POST", f"checkout/sessions/{session.id}/complete", {"promotion_code": "NOPE"})
    assert wrong.status_code == 400
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {"promotion_code": "LAUNCH25"})
    assert done["discounts"] == [{"coupon": None, "promotion_code": promo.id}]
    assert (done["amount_subtotal"], done["amount_total"]) == (6000, 4500)  # 3 seats
    assert done["total_details"]["amount_discount"] == 1500
    assert client.v1.promotion_codes.retrieve(promo.id).times_redeemed == 1
    assert client.v1.coupons.retrieve(coupon.id).times_redeemed == 1


@pytest.mark.parametrize(("interval", "count", "days"), [("year", 1, 365), ("week", 2, 14)])
def test_a_period_lasts_the_prices_interval(
    client: stripe.StripeClient, ctl: Control, interval: str, count: int, days: int
) -> None:
    """A yearly plan renewed (and charged) every 30 days in `dev`."""
    price = recurring_price(client, 20_000, interval, count)
    sub = _subscribed(client, ctl, price.id)
    [item] = sub["items"].data
    assert item.current_period_end - item.current_period_start == days * 86_400
    ctl("POST", "clock/advance", {"seconds": (days - 1) * 86_400})
    paid = client.v1.invoices.list(params={"subscription": sub.id}).data
    assert len(paid) == 1  # the first period's only
    ctl("POST", "clock/advance", {"seconds": 2 * 86_400})
    assert len(client.v1.invoices.list(params={"subscription": sub.id}).data) == 2


def test_a_new_interval_restarts_the_period_and_bills_it_now(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """Monthly to yearly: Stripe resets the billing cycle anchor and invoices at once (the
    yearly plan ended 30 days later in the emulator, as the monthly period did)."""
    monthly = recurring_price(client)
    yearly = recurring_price(client, 20_000, "year")
    session = _checkout(client, monthly.id)
    sub_id = ctl("POST", f"checkout/sessions/{session.id}/complete", {})["subscription"]
    ctl("POST", "clock/advance", {"seconds": 10 * DAY})
    item = client.v1.subscriptions.retrieve(sub_id)["items"].data[0]
    before = ctl("GET", "clock")["now"]
    changed = client.v1.subscriptions.update(
        sub_id, {"items": [{"id": item.id, "price": yearly.id}]}
    )
    [moved] = changed["items"].data
    now = changed.billing_cycle_anchor  # the time of the change
    assert before <= now <= ctl("GET", "clock")["now"]
    assert (moved.current_period_start, moved.current_period_end) == (now, months_later(now, 12))
    latest = client.v1.invoices.retrieve(str(changed.latest_invoice))
    # With a credit for the unused time of the monthly period (prorated to the second).
    credit, _ = latest.lines.data
    left = (item.current_period_end - now) / (item.current_period_end - item.current_period_start)
    assert credit.amount == -round(2000 * (item.quantity or 1) * left)
    assert credit.parent.subscription_item_details.proration is True
    assert (latest.billing_reason, latest.status, latest.amount_paid) == (
        "subscription_update",
        "paid",
        20_000 * (moved.quantity or 1) + credit.amount,
    )
    # A change within the interval keeps the period.
    seats = client.v1.subscriptions.update(sub_id, {"items": [{"id": moved.id, "quantity": 5}]})
    assert seats["items"].data[0].current_period_end == months_later(now, 12)
    assert seats.latest_invoice == changed.latest_invoice
