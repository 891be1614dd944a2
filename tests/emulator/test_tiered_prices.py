"""Tiered prices through the official SDK: created and refused as Stripe does, `tiers` shown
only when expanded (`expand[]=tiers`, `expand[]=data.tiers`), and metered usage on renewal
invoices priced per tier (graduated: each tier's units at its price; volume: every unit at the
price of the tier the total falls in; flat amounts added). Every response is checked against
Stripe's OpenAPI schema at the end."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import stripe

from tests.emulator.conftest import Control, past_period_end
from tests.emulator.test_meters import _check_recorded_against_spec, make_meter
from tests.emulator.test_usage_invoices import (
    line_for,
    renewal,
    report,
    subscribe_with_card,
)

# 1..100 at 2 cents + 100 flat; 101..1000 at 1 cent + 50 flat; beyond at 0.5 cent.
TIERS: list[dict[str, Any]] = [
    {"up_to": 100, "unit_amount": 2, "flat_amount": 100},
    {"up_to": 1000, "unit_amount": 1, "flat_amount_decimal": "50"},
    {"up_to": "inf", "unit_amount_decimal": "0.5"},
]


def tiered_price(
    client: stripe.StripeClient, meter: str | None, mode: str, tiers: list[dict[str, Any]]
) -> stripe.Price:
    recurring: dict[str, Any] = {"interval": "month"}
    if meter is not None:
        recurring.update(usage_type="metered", meter=meter)
    params: dict[str, Any] = {
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": mode,
        "tiers": tiers,
        "recurring": recurring,
        "product_data": {"name": "Tiered tokens"},
    }
    return client.v1.prices.create(params=params)  # type: ignore[arg-type]


def test_tiers_are_shown_only_when_expanded(client: stripe.StripeClient, ctl: Control) -> None:
    ctl.emulator.app.state.recorded.take()
    price = tiered_price(client, make_meter(client), "graduated", TIERS)
    assert (price.billing_scheme, price.tiers_mode) == ("tiered", "graduated")
    assert price.unit_amount is None
    assert "tiers" not in price
    shown = client.v1.prices.retrieve(price.id, params={"expand": ["tiers"]})
    assert [t.to_dict() for t in shown.tiers] == [
        {
            "flat_amount": 100,
            "flat_amount_decimal": Decimal("100"),
            "unit_amount": 2,
            "unit_amount_decimal": Decimal("2"),
            "up_to": 100,
        },
        {
            "flat_amount": 50,
            "flat_amount_decimal": Decimal("50"),
            "unit_amount": 1,
            "unit_amount_decimal": Decimal("1"),
            "up_to": 1000,
        },
        {
            "flat_amount": None,
            "flat_amount_decimal": None,
            "unit_amount": None,
            "unit_amount_decimal": Decimal("0.5"),
            "up_to": None,
        },
    ]
    listed = client.v1.prices.list(params={"expand": ["data.tiers"]}).data
    assert {p.id: "tiers" in p for p in listed} == {price.id: True}
    assert "tiers" not in client.v1.prices.list().data[0]
    [event] = client.v1.events.list(params={"type": "price.created"}).data
    assert "tiers" not in event.data.object  # events carry the price without its tiers
    _check_recorded_against_spec(ctl)


@pytest.mark.parametrize(
    ("change", "param", "message_part"),
    [
        ({"tiers": TIERS[:2]}, "tiers", "`inf`"),
        ({"tiers": [TIERS[1], TIERS[0], TIERS[2]]}, "tiers", "ascending"),
        ({"tiers_mode": None}, "tiers_mode", "Missing required param"),
        ({"tiers": None}, "tiers", "Missing required param"),
        ({"recurring": None}, "billing_scheme", "recurring"),
        ({"unit_amount": 5}, "unit_amount", "tiered"),
        ({"tiers": [{"up_to": "inf"}]}, "tiers[0][unit_amount]", "flat_amount"),
        ({"tiers": [{"up_to": "inf", "unit_amount": 1, "unit_amount_decimal": "1"}]},
         "tiers[0][unit_amount]", "only specify one"),
        ({"billing_scheme": "per_unit", "unit_amount": 5}, "tiers", "tiered"),
    ],
)  # fmt: skip
def test_bad_tiered_prices_are_refused(
    client: stripe.StripeClient, change: dict[str, Any], param: str, message_part: str
) -> None:
    params: dict[str, Any] = {
        "currency": "usd",
        "billing_scheme": "tiered",
        "tiers_mode": "volume",
        "tiers": TIERS,
        "recurring": {"interval": "month"},
        "product_data": {"name": "Refused"},
        **change,
    }
    params = {key: value for key, value in params.items() if value is not None}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.prices.create(params=params)  # type: ignore[arg-type]
    assert refused.value.param == param
    assert message_part.lower() in (refused.value.user_message or "").lower()
    assert refused.value.http_status == 400
    assert client.v1.prices.list().data == []


@pytest.mark.parametrize(
    ("mode", "used", "amount"),
    [
        # graduated: 100 x 2 + 100 flat, 900 x 1 + 50 flat, 201 x 0.5 = 100.5
        ("graduated", "1201", 1351),
        ("graduated", "100", 300),  # the first tier only, its flat amount once
        ("graduated", "0", 0),  # no tier reached
        # volume: 1201 falls in the last tier: 1201 x 0.5 = 600.5, rounded half up
        ("volume", "1201", 601),
        ("volume", "101", 151),  # the second tier: 101 x 1 + 50 flat
    ],
)
def test_renewal_prices_metered_usage_per_tier(
    client: stripe.StripeClient, ctl: Control, mode: str, used: str, amount: int
) -> None:
    ctl.emulator.app.state.recorded.take()
    price = tiered_price(client, make_meter(client), mode, TIERS).id
    sub_id = subscribe_with_card(client, [{"price": price}])
    customer = client.v1.subscriptions.retrieve(sub_id).customer
    assert isinstance(customer, str)
    if used != "0":
        report(client, "tokens", customer, used)
    past_period_end(ctl, client, sub_id)
    invoice = renewal(client, sub_id)
    line = line_for(invoice, price)
    assert (line.quantity, line.amount) == (int(used), amount)
    assert line.pricing and line.pricing.unit_amount_decimal is None
    assert invoice.amount_due == amount
    _check_recorded_against_spec(ctl)


@pytest.mark.parametrize(("rounding", "used", "amount"), [("up", "1201", 1000), ("down", "999", 0)])
def test_a_package_price_bills_whole_packages(
    client: stripe.StripeClient, ctl: Control, rounding: str, used: str, amount: int
) -> None:
    """`transform_quantity`: the usage divided by `divide_by`, rounded, then priced."""
    ctl.emulator.app.state.recorded.take()
    transform = {"divide_by": 1000, "round": rounding}
    price = client.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 500,
            "transform_quantity": transform,  # type: ignore[typeddict-item]
            "recurring": {
                "interval": "month",
                "usage_type": "metered",
                "meter": make_meter(client),
            },
            "product_data": {"name": "Tokens by the thousand"},
        }
    )
    shown = client.v1.prices.retrieve(price.id).transform_quantity
    assert shown and (shown.divide_by, shown.round) == (1000, rounding)
    sub_id = subscribe_with_card(client, [{"price": price.id}])
    customer = client.v1.subscriptions.retrieve(sub_id).customer
    assert isinstance(customer, str)
    report(client, "tokens", customer, used)
    past_period_end(ctl, client, sub_id)
    line = line_for(renewal(client, sub_id), price.id)
    assert (line.quantity, line.amount) == (int(used), amount)
    _check_recorded_against_spec(ctl)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.prices.create(
            params={
                "currency": "usd",
                "unit_amount": 500,
                "transform_quantity": {"divide_by": 1000, "round": "sideways"},  # type: ignore[typeddict-item]
                "product_data": {"name": "Refused"},
            }
        )
    assert refused.value.param == "transform_quantity[round]"
