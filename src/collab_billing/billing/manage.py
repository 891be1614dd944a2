"""Managing a subscription: the `intent`s of `POST /billing/subscriptions/manage`.

Portal intents answer a customer portal URL: `cancel` (the `subscription_cancel` flow),
`manage` (the portal's home page), `update_payment_method` (`payment_method_update`) and
`change_plan` (`subscription_update_confirm` for the subscription's item: the user confirms
the new price, seats and proration in Stripe's UI; the portal's default
`trial_update_behavior=end_trial` ends a trial with the change). API intents make the change
themselves and answer the subscription: `stop_cancellation` (`cancel_at_period_end=false`),
`end_trial` (`trial_end=now`), and `change_plan` of a subscription that bills usage beside
its plan, or gains usage prices with the new plan (the portal cannot update one of several
items, nor add one); the row is refreshed from Stripe under resync's watermark rule, so it
never goes backwards. An intent that does not apply is a 409. `pay_invoice` answers the
overdue invoice's hosted page, read from the mirror (no portal, no Stripe call).

Stripe is only called once the read transaction is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.access import (
    find_user,
    is_overdue,
    list_user_subscriptions,
)
from collab_billing.billing.errors import Conflict, InvalidField, NotFound
from collab_billing.billing.plans import (
    Plan,
    currencies_of,
    meters_of,
    plan_of_price,
    resolve_plan,
    same_cadence,
    same_product,
    usage_prices,
)
from collab_billing.billing.sync import sync_subscriptions
from collab_billing.billing.targets import (
    ENDED,
    ManageRequest,
    customer_of,
    target_of,
    why_not_cancelable,
    why_not_changeable,
    why_not_stoppable,
    why_not_trialing,
)
from collab_billing.billing.turns import change_turn
from collab_billing.db import invoice_queries, queries
from collab_billing.db.engine import read_only
from collab_billing.db.models import BillingSubscription
from collab_billing.mirror.subscriptions import (
    SUBSCRIPTIONS,
    SubscriptionItem,
    is_metered,
    item_price_id,
)
from collab_billing.mirror.subscriptions import plan_item as subscription_plan_item
from collab_billing.reconcile.resync import refresh
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.events import Ref, decode_object


@dataclass(frozen=True)
class ManageResult:
    portal_url: str | None = None
    changed: queries.SubscriptionRow | None = None  # what an API intent changed, as now stored


def manage_subscription(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    """The intent; those that may change the subscription through Stripe's API take the
    user's turn (`turns.change_turn`): each decides from what it reads of the subscription."""
    intent = INTENTS[request.intent]
    if request.intent not in CHANGES:
        return intent(factory, gateway, request)
    with change_turn(factory, find_user(factory, request.github_user_id).id):
        return intent(factory, gateway, request)


def open_cancel_portal(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    github_user_id: int,
    subscription_id: int | str | None,
) -> str:
    """The URL of a portal session whose flow cancels the chosen subscription."""
    request = ManageRequest(github_user_id, "cancel", subscription_id)
    url = _cancel(factory, gateway, request).portal_url
    assert url is not None
    return url


# -- the intents ----------------------------------------------------------------------------


def _cancel(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    customer, target = target_of(
        factory, request, why_not_cancelable, "active subscription to cancel"
    )
    flow = {
        "type": "subscription_cancel",
        "subscription_cancel": {"subscription": target.stripe_subscription_id},
    }
    return ManageResult(portal_url=gateway.create_portal_session(customer_id=customer, flow=flow))


def _home(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    return ManageResult(
        portal_url=gateway.create_portal_session(customer_id=customer_of(factory, request))
    )


def _update_payment_method(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    flow = {"type": "payment_method_update"}
    customer = customer_of(factory, request)
    return ManageResult(portal_url=gateway.create_portal_session(customer_id=customer, flow=flow))


def _change_plan(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    if request.price is None and request.quantity is None:
        raise InvalidField("price", "change_plan needs the new plan's `price`, or a `quantity`")
    settings = gateway.settings
    customer, target = target_of(
        factory, request, why_not_changeable, "active subscription to change"
    )
    keys = settings.billing_price_lookup_keys()
    plan = _wanted_plan(factory, request, target, settings.stripe_price_id, keys)
    quantity = _seats(factory, request, target, plan)
    sub_id = target.stripe_subscription_id
    currencies = currencies_of(factory, [plan.stripe_price_id, target.stripe_price_id or ""])
    if len(currencies) > 1:  # Stripe bills a subscription, and its customer, in one currency
        raise Conflict(
            f"subscription {sub_id} bills in {currencies[1]}, {request.price} in "
            f"{currencies[0]}: cancel the subscription (intent `cancel`), then check out the "
            "new plan once it has ended"
        )
    body = gateway.get("subscriptions.retrieve", f"/v1/subscriptions/{sub_id}")
    item, billed = _item_change(sub_id, SUBSCRIPTIONS.decode(body).items.data, plan, quantity)
    # The usage prices a Checkout of the new plan would get, on meters not billed yet.
    wanted = usage_prices(factory, plan, settings.billing_usage_price_keys())
    billed_meters = meters_of(factory, billed)
    added = [price for meter, price in wanted.items() if meter not in billed_meters]
    if billed or added:
        change = UsageChange(request, target, plan, billed, added)
        return _change_plan_beside_usage(factory, gateway, change, item)
    if target.stripe_subscription_status == "trialing":
        _refuse_billing_without_a_card(gateway, customer, sub_id)  # the portal ends the trial
    flow = {
        "type": "subscription_update_confirm",
        "subscription_update_confirm": {"subscription": sub_id, "items": [item]},
    }
    return ManageResult(portal_url=gateway.create_portal_session(customer_id=customer, flow=flow))


def _seats(
    factory: sessionmaker[Session], request: ManageRequest, target: BillingSubscription, plan: Plan
) -> int | None:
    """The new plan's quantity; a 409 when nothing would change. A metered price bills usage
    and takes no quantity (Stripe refuses one). Without one asked, the seats carry over to
    another price of the same product (monthly to yearly); another product starts at one, as
    its Checkout would (not 5 seats of a per-user plan)."""
    kept = target.quantity or 1
    if not same_product(factory, plan.stripe_price_id, target.stripe_price_id):
        kept = 1
    quantity = None if plan.metered else request.quantity or kept
    if plan.stripe_price_id == target.stripe_price_id and quantity in (None, target.quantity or 1):
        seats = "" if quantity is None else f" with quantity {quantity}"
        raise Conflict(
            f"subscription {target.stripe_subscription_id} is already on "
            f"{request.price or plan.stripe_price_id}{seats}"
        )
    return quantity


def _item_change(
    sub_id: str, items: list[SubscriptionItem], plan: Plan, quantity: int | None
) -> tuple[dict[str, Any], list[str]]:
    """The change of the plan's item (a new item beside the usage items of a subscription
    of usage alone), and the usage prices billed beside it."""
    plan_item = subscription_plan_item(items)
    if plan_item is not None and is_metered(plan_item):
        plan_item = None  # a subscription of usage alone: the plan goes beside it
    usage = [other for other in items if other is not plan_item]
    if not all(is_metered(other) for other in usage):
        raise Conflict(f"subscription {sub_id} has {len(items)} items of plans")
    item: dict[str, Any] = {"price": plan.stripe_price_id}
    if plan_item is not None:
        item["id"] = plan_item.id
        if item_price_id(plan_item) == plan.stripe_price_id:
            del item["price"]  # seats only: the price stays, archived or not
    if quantity is not None:
        item["quantity"] = quantity
    return item, [price for other in usage if (price := item_price_id(other))]


def _wanted_plan(
    factory: sessionmaker[Session],
    request: ManageRequest,
    target: BillingSubscription,
    default_price: str | None,
    lookup_keys: Sequence[str] | None,
) -> Plan:
    """The plan `price` names, which must be for sale; without one, or naming the price the
    subscription is on, that price, for sale or not: a subscriber kept on an archived price
    changes their seats without being moved to the price now sold."""
    assert target.stripe_price_id is not None  # a subscription of an active status has one
    current = plan_of_price(factory, target.stripe_price_id)
    if request.price in (None, current.stripe_price_id, current.lookup_key):
        return current
    return resolve_plan(factory, request.price, default_price, lookup_keys)


@dataclass(frozen=True)
class UsageChange:
    request: ManageRequest
    target: BillingSubscription
    plan: Plan
    billed: list[str]  # the subscription's usage prices
    added: list[str]  # the usage prices that go beside the new plan, not there yet


def _change_plan_beside_usage(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    change: UsageChange,
    item: dict[str, Any],
) -> ManageResult:
    """Stripe's portal cannot update a subscription of several items (a plan and its usage
    prices), nor add one: the plan's item is changed here, through the API, prorated on the
    next invoice as the portal would (a trial goes on), and the new plan's usage prices
    (`BILLING_USAGE_PRICES`) join it. The usage prices there stay: the new plan must bill in
    their currency and on their interval (replacing them mid-period would leave the usage so
    far unbilled), and be no metered price itself."""
    sub_id = change.target.stripe_subscription_id
    if change.billed and (
        change.plan.metered
        or not same_cadence(factory, change.plan.stripe_price_id, change.billed[0])
    ):
        raise Conflict(
            f"subscription {sub_id} bills usage beside its plan: its plan changes only to a "
            f"licensed plan of the same currency and interval, which {change.request.price} "
            "is not; cancel the subscription (intent `cancel`), then check out the new plan "
            "once it has ended"
        )
    _update(factory, gateway, sub_id, items=[item, *({"price": p} for p in change.added)])
    return _refreshed(factory, gateway, change.request, sub_id)


def _stop_cancellation(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    _, target = target_of(factory, request, why_not_stoppable, "subscription scheduled to cancel")
    sub_id = target.stripe_subscription_id
    if target.stripe_cancel_at_period_end:
        _update(factory, gateway, sub_id, cancel_at_period_end=False)
    else:
        _update(factory, gateway, sub_id, cancel_at="")  # clears a cancel_at date
    return _refreshed(factory, gateway, request, sub_id)


def _end_trial(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest
) -> ManageResult:
    customer, target = target_of(factory, request, why_not_trialing, "subscription in a trial")
    _refuse_billing_without_a_card(gateway, customer, target.stripe_subscription_id)
    _update(factory, gateway, target.stripe_subscription_id, trial_end="now")
    return _refreshed(factory, gateway, request, target.stripe_subscription_id)


class _Payer(msgspec.Struct):
    """Where Stripe finds the card it charges: the subscription's, else its customer's."""

    default_payment_method: str | Ref | None = None
    default_source: str | Ref | None = None
    invoice_settings: _Payer | None = None


def _refuse_billing_without_a_card(gateway: StripeGateway, customer: str, sub_id: str) -> None:
    """A trial ended now is billed now: with no card to charge, that is a failed payment and
    a debt the user never chose (left to run out, the trial would just end)."""
    if not _has_payment_method(gateway, customer, sub_id):
        raise Conflict(
            f"subscription {sub_id} has no payment method to bill when its trial ends: add "
            "one first (intent update_payment_method)"
        )


def _has_payment_method(gateway: StripeGateway, customer_id: str, sub_id: str) -> bool:
    body = gateway.get("subscriptions.retrieve", f"/v1/subscriptions/{sub_id}")
    sub = decode_object(body, _Payer)
    if sub.default_payment_method or sub.default_source:
        return True
    customer = decode_object(
        gateway.get("customers.retrieve", f"/v1/customers/{customer_id}"), _Payer
    )
    settings = customer.invoice_settings
    return bool(customer.default_source or (settings and settings.default_payment_method))


def _update(
    factory: sessionmaker[Session], gateway: StripeGateway, sub_id: str, **changes: Any
) -> None:
    """The change at Stripe; a subscription that ended there before its event was applied
    here is a 409 (the intent no longer applies), and its row is brought up to date."""
    try:
        gateway.update_subscription(sub_id, **changes)
    except StripeGatewayError as error:
        if error.http_status != 400:
            raise
        refresh(factory, gateway, SUBSCRIPTIONS, [sub_id])
        with read_only(factory) as session:
            status = session.scalar(
                select(BillingSubscription.stripe_subscription_status).where(
                    BillingSubscription.stripe_subscription_id == sub_id
                )
            )
        if status not in ENDED:
            raise
        raise Conflict(f"subscription {sub_id} has already ended ({status})") from error


def _refreshed(
    factory: sessionmaker[Session], gateway: StripeGateway, request: ManageRequest, sub_id: str
) -> ManageResult:
    # Read as a sync reads: the user's subscriptions with the customer's features, written
    # together, so that the state document changes once (a new plan was notified with the old
    # plan's features until the next poll).
    sync_subscriptions(factory, gateway, request.github_user_id, None)
    rows = list_user_subscriptions(factory, request.github_user_id)
    return ManageResult(changed=next(r for r in rows if r.stripe_subscription_id == sub_id))


Intent = Callable[[sessionmaker[Session], StripeGateway, ManageRequest], ManageResult]
CHANGES = frozenset({"change_plan", "stop_cancellation", "end_trial"})
INTENTS: dict[str, Intent] = {
    "cancel": _cancel,
    "manage": _home,
    "update_payment_method": _update_payment_method,
    "change_plan": _change_plan,
    "stop_cancellation": _stop_cancellation,
    "end_trial": _end_trial,
}


def invoice_to_pay(
    factory: sessionmaker[Session],
    github_user_id: int,
    subscription_id: int | str | None,
    now: datetime,
) -> str:
    """The hosted page of the invoice the user should pay (the `pay_invoice` intent): the
    oldest overdue one (of `subscription_id` if given), else the oldest open one. Read from
    the mirror: no Stripe call, no portal."""
    user = find_user(factory, github_user_id)
    with read_only(factory) as session:
        invoices = list(invoice_queries.open_invoices(session, github_user_id))
        if subscription_id is not None:
            owned = queries.list_subscriptions_of_user(session, user.id)
            target = next(
                (s for s in owned if subscription_id in (s.id, s.stripe_subscription_id)), None
            )
            if target is None:
                raise NotFound(
                    f"subscription {subscription_id} is not one of user {github_user_id}'s"
                )
            invoices = [
                i for i in invoices if i.stripe_subscription_id == target.stripe_subscription_id
            ]
    # An uncollectible invoice is payable when owed (`is_overdue`): not a period given free.
    payable = [
        i
        for i in invoices
        if i.hosted_invoice_url
        and i.amount_remaining > 0
        and (i.status == "open" or is_overdue(i, now))
    ]
    payable.sort(key=lambda invoice: not is_overdue(invoice, now))  # stable: oldest first
    if not payable:
        raise Conflict(f"user {github_user_id} has no open invoice to pay")
    url = payable[0].hosted_invoice_url
    assert url is not None
    return url
