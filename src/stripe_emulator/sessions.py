"""Checkout sessions and billing portal sessions, and what completing them does.

Completing a subscription-mode Checkout session emits, all in the same second as Stripe does:
`customer.created` (only if the session had no customer), `customer.subscription.created`
(status `incomplete`), `customer.subscription.updated` (`active`, previous status
`incomplete`), `checkout.session.completed`. With a trial, the subscription is created
`trialing`. In between come the card (`payment_method.attached`), the customer's `currency`
set by its subscription (`customer.updated`, just before `customer.subscription.created`,
when that changes it: customer_currency.py) and the first invoice (`invoice.created`,
`.finalized`, `.paid`, `.payment_succeeded`; $0 during a trial), and the update also sets the
subscription's `default_payment_method` and `latest_invoice`. A session whose customer holds
live objects in another currency is refused at its creation, as Stripe refuses it.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import customer_currency, ids, invoices, payment_methods, portal_flows
from stripe_emulator.api_coupons import apply_promotion_code
from stripe_emulator.catalog import create_customer
from stripe_emulator.errors import StripeError, bad_request
from stripe_emulator.immediate_cancel import cancel_now
from stripe_emulator.records import (
    DAY,
    CheckoutSession,
    LineItem,
    PortalSession,
    Subscription,
    evolve,
)
from stripe_emulator.store import Store
from stripe_emulator.subscription_items import ItemSpec
from stripe_emulator.subscriptions import (
    ENDED,
    SubscriptionChanges,
    create_subscription,
    update_subscription,
)

SESSION_LIFETIME = DAY


def create_checkout_session(
    store: Store,
    *,
    base_url: str,
    line_items: list[LineItem],
    expires_at: int | None = None,
    **fields: Any,
) -> CheckoutSession:
    if fields.get("customer") is not None:
        store.live_customer(fields["customer"])
        # Stripe refuses at creation a session its customer could not pay for.
        customer_currency.check(store, fields["customer"], line_items[0].price.currency)
    now = store.now()
    session_id = ids.checkout_session_id()
    record = CheckoutSession(
        id=session_id,
        created=now,
        expires_at=expires_at or now + SESSION_LIFETIME,
        url=f"{base_url}/_emulator/pages/checkout/{session_id}",
        line_items=tuple(line_items),
        **fields,
    )
    store.checkout_sessions.add(record.id, record)
    return record


def _open_session(store: Store, session_id: str) -> CheckoutSession:
    session = store.checkout_sessions.get(session_id)
    if session.status == "open" and session.expires_at <= store.now():
        expire_checkout_session(store, session_id)
        session = store.checkout_sessions.rows[session_id]
    if session.status != "open":
        raise bad_request(f"This Checkout Session is not open (status: {session.status}).")
    return session


def _collects_card(session: CheckoutSession, card: bool | None) -> bool:
    """Whether the customer gives a card: `payment_method_collection=if_required` with a
    trial lets them skip it (`card: false`); otherwise Checkout always takes one."""
    optional = session.payment_method_collection == "if_required" and bool(
        session.trial_period_days
    )
    if card is False and not optional:
        raise bad_request("This Checkout Session requires a payment method.", "card")
    return card is not False if not optional else bool(card)


def complete_checkout_session(
    store: Store,
    session_id: str,
    *,
    email: str | None = None,
    name: str | None = None,
    card: bool | None = None,
    promotion_code: str | None = None,
    payment_method: str = "pm_card_visa",
) -> CheckoutSession:
    """`payment_method`: the test token of the card the customer enters (a declining one
    raises 402 `card_declined` and changes nothing, as Checkout keeps the customer on the page)."""
    session = _open_session(store, session_id)
    card_token = payment_methods.TEST_TOKENS.get(payment_method)
    if card_token is None:
        raise bad_request(
            f"`payment_method` must be one of {', '.join(payment_methods.TEST_TOKENS)}.",
            "payment_method",
        )
    collects = _collects_card(session, card)
    if collects and card_token[2] and not session.trial_period_days:
        raise payment_methods.card_declined()
    if promotion_code is not None:
        session = apply_promotion_code(store, session, promotion_code)
    now = store.customer_now(session.customer)
    customer_id = session.customer
    email = email or session.customer_email
    if customer_id is None:
        email = email or f"customer-{ids.random_part(6).lower()}@example.com"
        customer_id = create_customer(store, email=email, name=name, created=now).id
    else:
        customer = store.live_customer(customer_id)
        email = email or customer.email
        name = name or customer.name
    trial = session.trial_period_days
    # The card the customer entered, attached to the customer (none: a card-less trial).
    entered = payment_methods.attach(store, payment_method, customer_id) if collects else None
    sub = create_subscription(
        store,
        customer=customer_id,
        items=[ItemSpec(line.price, line.quantity) for line in session.line_items],
        metadata=dict(session.subscription_metadata) or None,
        status="incomplete",
        trial_days=trial,
        description=session.subscription_description,
        created=now,
        default_payment_method=entered.id if entered else None,
        missing_payment_method=session.missing_payment_method,
        # The code entered becomes the subscription's discount, on its invoices while it lasts.
        wanted_discounts=(
            [("promotion_code", session.promotion_code, "promotion_code")]
            if session.promotion_code is not None
            else None
        ),
    )
    # The session's URL has the emulator's public base: its invoices' pages live there too.
    store.invoice_base_url = session.url.split("/_emulator/", 1)[0]
    invoices.start(store, sub, entered, now)
    done = evolve(
        session,
        status="complete",
        payment_status="no_payment_required" if trial else "paid",
        customer=customer_id,
        subscription=sub.id,
        customer_details_email=email,
        customer_details_name=name,
    )
    store.checkout_sessions.put(done.id, done)
    store.emit("checkout.session.completed", done, created=now)
    return done


def expire_checkout_session(
    store: Store, session_id: str, created: int | None = None
) -> CheckoutSession:
    session = store.checkout_sessions.get(session_id)
    if session.status != "open":
        raise bad_request(
            f"Only Checkout Sessions with a status of `open` can be expired "
            f"(this one is `{session.status}`)."
        )
    done = evolve(session, status="expired")
    store.checkout_sessions.put(done.id, done)
    store.emit("checkout.session.expired", done, created=created)
    return done


def create_portal_session(
    store: Store,
    *,
    base_url: str,
    customer: str,
    return_url: str | None,
    flow: dict[str, Any] | None,
    locale: str | None = None,
) -> PortalSession:
    store.live_customer(customer)
    if flow is not None:
        portal_flows.check_flow(store, customer, flow)
    session_id = ids.new_id("bps")
    record = PortalSession(
        id=session_id,
        created=store.now(),
        customer=customer,
        url=f"{base_url}/_emulator/pages/billing_portal/{session_id}",
        configuration=store.portal_configuration,
        return_url=return_url,
        flow=flow,
        locale=locale,
    )
    store.portal_sessions.add(record.id, record)
    return record


def _portal_subscription(store: Store, session: PortalSession, chosen: str | None) -> Subscription:
    if session.flow is not None and session.flow["type"] == "subscription_cancel":
        return store.subscriptions.get(session.flow["subscription_cancel"]["subscription"])
    if chosen is not None:
        sub = store.subscriptions.get(chosen, "subscription")
        if sub.customer != session.customer:
            raise bad_request(f"The subscription {chosen} is not the session customer's.")
        return sub
    live = [s for s in store.customer_subscriptions(session.customer) if s.status not in ENDED]
    if len(live) != 1:
        raise bad_request(
            f"The customer has {len(live)} subscriptions that can be canceled; "
            'say which with {"subscription": "sub_..."}.'
        )
    return live[0]


def confirm_portal_cancel(
    store: Store,
    session_id: str,
    *,
    immediately: bool = False,
    subscription: str | None = None,
    comment: str | None = None,
    feedback: str | None = None,
) -> Subscription:
    """What the customer does in the portal: cancel at period end (the default) or now, as
    the API's cancel does without `prorate` nor `invoice_now` (immediate_cancel.py)."""
    session = store.portal_sessions.get(session_id)
    sub = _portal_subscription(store, session, subscription)
    if sub.status in ENDED:
        raise StripeError(400, f"The subscription {sub.id} has already been canceled.")
    if immediately:
        return cancel_now(store, sub.id, comment=comment, feedback=feedback)
    changes = SubscriptionChanges(cancel_at_period_end=True, comment=comment, feedback=feedback)
    return update_subscription(store, sub.id, changes)
