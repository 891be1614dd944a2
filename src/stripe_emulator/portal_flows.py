"""Billing portal flows beyond cancel: `payment_method_update`, `subscription_update` and
`subscription_update_confirm`, and what the customer confirming them in the portal does.

Confirming applies the change the way Stripe's portal does (the default portal configuration:
`proration_behavior=create_prorations`, `trial_update_behavior=end_trial`) and emits what Stripe
emits: one `customer.subscription.updated` with `previous_attributes`.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import payment_methods
from stripe_emulator.catalog import update_customer
from stripe_emulator.errors import StripeError, bad_request, check_currency
from stripe_emulator.forms import Params
from stripe_emulator.records import PortalSession, Subscription
from stripe_emulator.store import Store
from stripe_emulator.subscription_items import ItemSpec
from stripe_emulator.subscriptions import (
    ENDED,
    SubscriptionChanges,
    update_subscription,
)

UPDATE_FLOWS = ("subscription_update", "subscription_update_confirm")


def flow_sections(kind: str, data: Params) -> dict[str, Any]:
    """The flow's type-specific sections, as the session object renders them."""
    sections: dict[str, Any] = {"subscription_update": None, "subscription_update_confirm": None}
    if kind == "subscription_update":
        section = data.hash("subscription_update", required=True)
        assert section is not None
        sections[kind] = {"subscription": section.string("subscription", required=True)}
    elif kind == "subscription_update_confirm":
        section = data.hash("subscription_update_confirm", required=True)
        assert section is not None
        entries = section.dicts("items", required=True) or []
        if len(entries) != 1:
            raise bad_request(
                "Only one subscription item may be updated through this flow.",
                "flow_data[subscription_update_confirm][items]",
            )
        items = [_confirm_item(entry) for entry in entries]
        section.ignore("discounts")
        sections[kind] = {
            "discounts": [],
            "items": items,
            "subscription": section.string("subscription", required=True),
        }
    return sections


def _confirm_item(entry: Params) -> dict[str, Any]:
    item: dict[str, Any] = {"id": entry.string("id", required=True), "price": entry.string("price")}
    quantity = entry.integer("quantity", minimum=1)
    if quantity is not None:  # rendered only when given (the schema's is not nullable)
        item["quantity"] = quantity
    return item


def flow_subscription_id(flow: dict[str, Any]) -> str | None:
    kind = flow["type"]
    if kind in ("subscription_cancel", *UPDATE_FLOWS):
        return str(flow[kind]["subscription"])
    return None


def check_flow(store: Store, customer: str, flow: dict[str, Any]) -> None:
    """Stripe refuses at creation a flow that could not be completed."""
    sub_id = flow_subscription_id(flow)
    if sub_id is None:
        return
    param = f"flow_data[{flow['type']}][subscription]"
    sub = store.subscriptions.get(sub_id, param)
    if sub.customer != customer:
        raise bad_request(
            f"The subscription {sub_id} does not belong to the customer {customer}.", param
        )
    if sub.status in ENDED:
        raise bad_request(f"The subscription {sub_id} has already been canceled.", param)
    if flow["type"] == "subscription_update_confirm":
        _check_confirm_items(store, sub, flow["subscription_update_confirm"]["items"])


def _check_confirm_items(store: Store, sub: Subscription, items: list[dict[str, Any]]) -> None:
    param = "flow_data[subscription_update_confirm][items]"
    for item in items:
        if item["id"] not in {own.id for own in sub.items}:
            raise bad_request(f"The subscription item {item['id']} is not on {sub.id}.", param)
        if item["price"] is not None:
            price = store.prices.get(item["price"], f"{param}[0][price]")
            if not price.active or price.interval is None:
                raise bad_request(
                    f"The price {price.id} is not an active recurring price.", f"{param}[0][price]"
                )
            check_currency(sub.items[0].price.currency, price.currency, f"{param}[0][price]")


def confirm_update(
    store: Store,
    session: PortalSession,
    *,
    price: str | None = None,
    quantity: int | None = None,
) -> Subscription:
    """The customer confirms the update: the flow's item change (`subscription_update_confirm`)
    or the one they picked (`subscription_update`: `price` and/or `quantity`)."""
    flow = session.flow
    assert flow is not None and flow["type"] in UPDATE_FLOWS
    sub = store.subscriptions.get(flow[flow["type"]]["subscription"])
    if sub.status in ENDED:
        raise StripeError(400, f"The subscription {sub.id} has already been canceled.")
    if flow["type"] == "subscription_update_confirm":
        if price is not None or quantity is not None:
            raise bad_request("This flow's change is fixed by the session; send `{}`.")
        item = flow["subscription_update_confirm"]["items"][0]
        spec = ItemSpec(
            store.prices.get(item["price"]) if item["price"] else None,
            item.get("quantity"),
            id=item["id"],
        )
    else:
        if price is None and quantity is None:
            raise bad_request("Say what the customer picks: `price` and/or `quantity`.")
        chosen = store.prices.get(price, "price") if price else None
        spec = ItemSpec(chosen, quantity, id=sub.items[0].id)
    changes = SubscriptionChanges(items=[spec], trial_end_now=sub.status == "trialing")
    return update_subscription(store, sub.id, changes)


def confirm_payment_method(store: Store, session: PortalSession) -> list[Subscription]:
    """The customer adds a card: it becomes the customer's
    `invoice_settings.default_payment_method` (the flow's documented effect) and the default
    payment method of their live subscriptions."""
    card = payment_methods.attach(store, "pm_card_visa", session.customer).id
    update_customer(store, session.customer, default_payment_method=card)
    updated = []
    for sub in store.customer_subscriptions(session.customer):
        if sub.status not in ENDED:
            changes = SubscriptionChanges(default_payment_method=card)
            updated.append(update_subscription(store, sub.id, changes))
    return updated
