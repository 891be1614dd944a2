"""A customer's currency (`customer.currency`), and Stripe's refusal to bill one customer in two.

What Stripe does, and where it says so:

- `currency` is null until the customer's first subscription, invoice or invoice item, or
  flat-rate coupon attached to it, and is then that currency ("The default currency for a
  customer will also be set automatically when any of the following actions are taken for the
  first time: ... A flat-rate coupon is attached to the customer (not a percent-off coupon)",
  support.stripe.com/questions/setting-a-customers-default-currency). Setting it sends
  `customer.updated`, whose `previous_attributes` hold the old `currency` (a `customer.created`
  at once followed by a `customer.updated` giving it "usd", stripe/stripe-python#933). Here
  every invoice and invoice item belongs to a subscription, so the subscription sets it, or the
  customer's own `amount_off` discount (customer_discounts.py).
- While the customer holds a live subscription, a pending invoice item, an `amount_off`
  discount of its own or an open subscription-mode Checkout Session in one currency, a
  subscription, a subscription-mode Checkout Session or a flat-rate coupon of its own in another
  is refused ("Once a customer's currency is set, you cannot create a subscription or coupon in
  another currency for that customer", the same page): a 400 `invalid_request_error` with no
  `code` and no `param`, in the words below (Stripe's answer as integrations log it verbatim,
  e.g. in 2026 to a buyer who had left USD Checkout Sessions open and chose BRL; older accounts
  read "This customer has had a subscription, coupon, or invoice item with currency ...").
  Checkout refuses at the session's creation, before the customer sees a page; as the open
  session then holds its currency, its completion meets no other (its subscription is checked
  all the same, as any new one).
- Once nothing of the old currency is live, a subscription in a new one is allowed and becomes
  the customer's currency: "The customer's default currency will be changed when the customer
  does not have any active subscriptions and you start a new subscription ... in a new
  currency" (support.stripe.com/questions/set-or-change-currency-for-an-invoice-or-customer-
  in-stripe-billing; "you must cancel existing subscriptions before creating a new
  subscription with a new currency", docs.stripe.com/invoicing/multiple-currencies).

Which subscriptions count as "active" there Stripe does not list: the stricter reading is
taken, every subscription not ended (`incomplete`, `past_due`, `unpaid` and `paused` too)
holds the currency, and so does a pending proration item of one that has ended. A
subscription's own discount is not counted: an `amount_off` coupon's currency is checked where
it is redeemed, against the subscription's.
"""

from __future__ import annotations

from stripe_emulator.diff import previous_attributes
from stripe_emulator.errors import StripeError
from stripe_emulator.objects import customer as render_customer
from stripe_emulator.records import evolve
from stripe_emulator.store import Store


def combine_currencies(held: str) -> StripeError:
    return StripeError(
        400,
        "You cannot combine currencies on a single customer. This customer has an active "
        "subscription, subscription schedule, discount, quote, invoice item or active "
        f"subscription mode checkout session with currency {held}.",
    )


def held_currency(store: Store, customer_id: str) -> str | None:
    """The currency the customer's live billing objects are in (None: nothing is live)."""
    from stripe_emulator.subscriptions import ENDED  # subscriptions imports this module

    for sub in store.customer_subscriptions(customer_id):
        if sub.status not in ENDED:
            return sub.currency
        pending = store.pending_prorations.get(sub.id)
        if pending:
            return pending[0].price.currency
    own = store.customers.rows[customer_id].discount
    if own is not None and own.coupon.amount_off is not None:
        return own.coupon.currency
    now = store.now()
    for session in store.checkout_sessions.rows.values():
        # An open session past its `expires_at` is expired, once anything reads it.
        open_ = session.status == "open" and session.expires_at > now
        if session.customer == customer_id and open_ and session.line_items:
            return session.line_items[0].price.currency
    return None


def check(store: Store, customer_id: str, currency: str) -> None:
    """Refuse a subscription, a Checkout Session or a flat-rate discount of its own in
    `currency` for this customer if it holds live objects in another."""
    held = held_currency(store, customer_id)
    if held is not None and held != currency:
        raise combine_currencies(held)


def adopt(store: Store, customer_id: str, currency: str, at: int) -> None:
    """The customer is billed in `currency` from now on (its new subscription's, or its
    flat-rate discount's), with Stripe's `customer.updated` when that changes it."""
    old = store.customers.rows[customer_id]
    if old.currency == currency:
        return
    new = evolve(old, currency=currency)
    store.customers.put(customer_id, new)
    previous = previous_attributes(render_customer(old), render_customer(new))
    store.emit("customer.updated", new, previous, created=at)
