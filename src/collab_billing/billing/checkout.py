"""Checkout: the user's Stripe customer (created once, or the one Stripe showed naming the user
before the user existed, linked first), then a Checkout session, the only one of the customer
open."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from collab_billing.billing.access import find_user, is_active, refuse_if_overdue
from collab_billing.billing.errors import Conflict
from collab_billing.billing.plans import Plan, currency_by_price, resolve_plan, usage_prices
from collab_billing.billing.sync import link_named_customer
from collab_billing.billing.targets import ENDED
from collab_billing.billing.trials import claim_trial, release_trial
from collab_billing.billing.turns import checkout_turn
from collab_billing.db import queries
from collab_billing.db.models import BillingSubscription, User
from collab_billing.mirror.subscriptions import SUBSCRIPTIONS
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError
from collab_billing.stripe_gateway.errors import is_combined_currencies


@dataclass(frozen=True)
class CheckoutRequest:
    github_user_id: int
    price: str | None = None  # a lookup key or a price id; None: STRIPE_PRICE_ID
    quantity: int = 1
    trial: bool = False


@dataclass(frozen=True)
class CheckoutStarted:
    url: str
    plan: Plan
    quantity: int | None  # None: a metered plan
    usage_price_ids: list[str]  # the metered prices added beside the plan
    trial_days: int | None  # None: no trial
    trial_refused: str | None  # why a requested trial was not given


def start_checkout(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    request: CheckoutRequest,
    now: datetime | None = None,
) -> CheckoutStarted:
    """A new Checkout session for the user's subscription to the requested plan, with a trial
    if asked for, offered (BILLING_TRIAL_DAYS) and the customer's first. Refused (409, with
    the invoice's hosted page) while the user has an overdue invoice: a new subscription must
    not be the way around paying it."""
    user = find_user(factory, request.github_user_id)
    with checkout_turn(factory, user.id):
        link_named_customer(factory, gateway, user)
        return _start(factory, gateway, request, user, now or datetime.now(UTC))


def _start(
    factory: sessionmaker[Session],
    gateway: StripeGateway,
    request: CheckoutRequest,
    user: User,
    now: datetime,
) -> CheckoutStarted:
    settings = gateway.settings
    refuse_if_overdue(factory, request.github_user_id, now)
    plan = resolve_plan(
        factory, request.price, settings.stripe_price_id, settings.billing_price_lookup_keys()
    )
    usage = list(usage_prices(factory, plan, settings.billing_usage_price_keys()).values())
    with factory() as session, session.begin():
        mine = queries.list_subscriptions_of_user(session, user.id)
    live = [s for s in mine if s.stripe_subscription_status not in ENDED]
    active = [s for s in live if is_active(s)]
    conflict = _another_currency(factory, request, plan, active[:1] or live)
    if conflict is not None:
        raise conflict
    if active:
        raise Conflict(
            f"user {request.github_user_id} already has an active subscription "
            f"({active[0].stripe_subscription_id}, {active[0].stripe_subscription_status})"
        )
    customer_id = ensure_customer(factory, gateway, user)
    expire_open_checkouts(factory, gateway, customer_id, request.github_user_id)
    quantity = None if plan.metered else request.quantity  # metered: billed by usage
    trial_days, refused = _trial(
        factory, customer_id, request.trial, settings.billing_trial_days, now
    )
    try:
        url = gateway.create_checkout_session(
            customer_id=customer_id,
            price_id=plan.stripe_price_id,
            client_reference_id=str(user.github_user_id),
            github_user_id=user.github_user_id,
            quantity=quantity,
            trial_days=trial_days,
            usage_price_ids=usage,
        )
    except Exception as error:
        if trial_days:
            release_trial(factory, customer_id)
        if isinstance(error, StripeGatewayError) and is_combined_currencies(error):
            # What the mirror does not show yet (a subscription made in Stripe a moment ago).
            raise Conflict(
                f"Stripe refused user {request.github_user_id} a Checkout of "
                f"{request.price or plan.stripe_price_id}, as it bills a customer in one "
                f"currency: {error.message}"
            ) from None
        raise
    return CheckoutStarted(url, plan, quantity, usage, trial_days, refused)


def _another_currency(
    factory: sessionmaker[Session],
    request: CheckoutRequest,
    plan: Plan,
    live: Sequence[BillingSubscription],
) -> Conflict | None:
    """409 when one of these live subscriptions of the user bills in another currency than
    the plan. Stripe bills a customer in one currency: while a subscription of it has not
    ended, whatever its status, Stripe refuses a Checkout Session in another (a 400 at its
    creation); once every one has ended, the next sets the customer's currency. Answered
    here, naming the subscription and the way out, before anything changes."""
    prices = {sub.stripe_subscription_id: _price_of(sub) for sub in live}
    currencies = currency_by_price(factory, [plan.stripe_price_id, *prices.values()])
    wanted = currencies.get(plan.stripe_price_id)
    name = request.price or plan.lookup_key or plan.stripe_price_id
    for sub in live:
        held = currencies.get(prices[sub.stripe_subscription_id])
        if wanted is None or held is None or held == wanted:
            continue
        named = f"({sub.stripe_subscription_id}, {sub.stripe_subscription_status})"
        said, way_out = f"has a subscription not ended {named}", f"a plan in {held}, or"
        if is_active(sub):
            said = f"already has an active subscription {named}"
            way_out = "cancel it (intent `cancel`), then"
        return Conflict(
            f"user {request.github_user_id} {said} billed in {held}, and {name} is in "
            f"{wanted}: Stripe bills a customer in one currency, so check out {way_out} {name} "
            "once that subscription has ended"
        )
    return None


def _price_of(sub: BillingSubscription) -> str:
    """A price of the subscription (its plan's, else its first item's): all bill in one
    currency."""
    return sub.stripe_price_id or next(iter(sub.stripe_item_price_ids or ()), "")


def expire_open_checkouts(
    factory: sessionmaker[Session], gateway: StripeGateway, customer_id: str, github_user_id: int
) -> None:
    """At most one Checkout of a customer can be paid, the newest: those still open are
    expired first (each completed one is a subscription, so two open ones could become two
    paid subscriptions). A trial claimed for an expired one is given back: it never began.
    A session completed meanwhile cannot be expired: the user has just subscribed (409).
    Called in the user's turn (`turns.checkout_turn`): requests of one user at once (a
    double click) would otherwise each leave their own session open."""
    with ThreadPoolExecutor(2) as pool:  # one round trip to Stripe, not two
        # A Checkout paid a moment ago may not be applied yet: Stripe is asked.
        listed = pool.submit(gateway.list_customer_subscriptions, customer_id)
        ended = gateway.expire_open_checkouts(customer_id)
        subscriptions = listed.result()
    expired = [session for session in ended if session.status == "expired"]
    decoded = [SUBSCRIPTIONS.decode(raw) for raw in subscriptions]
    # In the user's turn no other request holds a trial claim: with no subscription that ever
    # had a trial, a claim is held by a session just expired, or by none (a request killed
    # before it made its session), and is given back.
    if not any(subscription.trial_end is not None for subscription in decoded):
        release_trial(factory, customer_id)
    live = [
        subscription for subscription in decoded if subscription.status in queries.ACTIVE_STATUSES
    ]
    if live:
        raise Conflict(
            f"user {github_user_id} already has an active subscription on Stripe "
            f"({live[0].id}, {live[0].status}), not applied here yet"
        )
    if len(expired) < len(ended):  # the others were paid meanwhile
        raise Conflict(f"user {github_user_id} has just completed a Checkout")


def _trial(
    factory: sessionmaker[Session], customer_id: str, wanted: bool, days: int, now: datetime
) -> tuple[int | None, str | None]:
    if not wanted:
        return None, None
    if days == 0:
        return None, "trials are not offered (BILLING_TRIAL_DAYS is 0)"
    if claim_trial(factory, customer_id, now) is None:
        return None, "this customer has already had a trial (one per customer)"
    return days, None


def ensure_customer(factory: sessionmaker[Session], gateway: StripeGateway, user: User) -> str:
    """The user's live Stripe customer id, creating the customer (once) when there is none."""
    with factory() as session, session.begin():
        existing = queries.get_billing_customer_by_user_id(session, user.id)
        if existing is not None and existing.stripe_deleted_at is None:
            return existing.stripe_customer_id
        replaced = existing.stripe_customer_id if existing is not None else ""
    try:
        customer_id = gateway.create_customer(
            github_user_id=user.github_user_id,
            github_login=user.github_login,
            email=user.email_address,
            idempotency_key=_customer_idempotency_key(user, replaced),
        )
    except StripeGatewayError as error:
        if error.kind != "idempotency_error":
            raise
        # The key made a customer for an earlier request whose answer was lost, and the user's
        # details changed since: Stripe will not say which. Its event links it (it names the
        # user) within seconds; a new key here would make the user a second customer.
        raise Conflict(
            f"user {user.github_user_id}'s Stripe customer was made by an earlier request "
            "whose answer was lost; it is linked once Stripe's event for it is applied, "
            "within seconds: retry then"
        ) from None
    with factory() as session, session.begin():
        return queries.link_billing_customer(session, user.id, customer_id).stripe_customer_id


def _customer_idempotency_key(user: User, replaced_customer_id: str) -> str:
    """One key per user and customer to replace: a retry after a lost answer gets the customer
    made (with the user's details unchanged; else Stripe refuses the key, see above)."""
    material = f"{user.id}|{user.github_user_id}|{replaced_customer_id}"
    digest = hashlib.sha256(material.encode()).hexdigest()[:24]
    return f"collab-billing-customer-{user.id}-{digest}"
