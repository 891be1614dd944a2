"""Payment methods made from Stripe's test tokens, attached to customers, and charges on them.

`pm_card_visa` (and `pm_card_mastercard`) pay; `pm_card_chargeCustomerFail` attaches to a
customer like any card, then every charge on it is declined, as on Stripe. Attaching a token
makes a new `pm_...` (Stripe does the same); attaching an existing detached one reuses it.
"""

from __future__ import annotations

from stripe_emulator import ids
from stripe_emulator.billing_records import PaymentMethod
from stripe_emulator.errors import StripeError, bad_request
from stripe_emulator.records import evolve
from stripe_emulator.store import Store

# token -> (brand, last4, every charge fails)
TEST_TOKENS = {
    "pm_card_visa": ("visa", "4242", False),
    "pm_card_mastercard": ("mastercard", "4444", False),
    "pm_card_chargeCustomerFail": ("visa", "0341", True),
}


def card_declined() -> StripeError:
    return StripeError(402, "Your card was declined.", type_="card_error", code="card_declined")


def check_attachable(
    store: Store, pm_id: str, param: str, customer_id: str | None = None
) -> PaymentMethod:
    """An existing payment method that may be attached to `customer_id` (it is not another's)."""
    existing = store.payment_methods.get(pm_id, param)
    if existing.customer not in (None, customer_id):
        raise bad_request(
            "The payment method you provided has already been attached to a customer.", param
        )
    return existing


def attach(store: Store, pm_id: str, customer_id: str, param: str = "id") -> PaymentMethod:
    """Attach a payment method (or a new one made from a test token) to a customer."""
    store.live_customer(customer_id)
    token = TEST_TOKENS.get(pm_id)
    if token is not None:
        brand, last4, fails = token
        record = PaymentMethod(ids.new_id("pm"), store.now(), brand, last4, fails, customer_id)
        store.payment_methods.add(record.id, record)
    else:
        existing = check_attachable(store, pm_id, param, customer_id)
        if existing.customer == customer_id:
            return existing
        record = evolve(existing, customer=customer_id)
        store.payment_methods.put(record.id, record)
    store.emit("payment_method.attached", record)
    return record


def detach(store: Store, pm_id: str) -> PaymentMethod:
    record = store.payment_methods.get(pm_id)
    if record.customer is None:
        raise bad_request(
            f"The payment method {pm_id} is not attached to a customer and cannot be detached."
        )
    detached = evolve(record, customer=None)
    store.payment_methods.put(pm_id, detached)
    store.emit("payment_method.detached", detached, {"customer": record.customer})
    return detached


def customers_card(store: Store, pm_id: str, customer_id: str, param: str) -> PaymentMethod:
    """The customer's own attached payment method `pm_id` (a default must be one)."""
    record = store.payment_methods.rows.get(pm_id)
    if record is None or record.customer != customer_id:
        raise StripeError(
            400,
            f"The customer does not have a payment method with the ID {pm_id}. The payment "
            "method must be attached to the customer.",
            code="resource_missing",
            param=param,
        )
    return record


def no_card() -> StripeError:
    return StripeError(
        400,
        "This customer has no attached payment source or default payment method. Please "
        "consider adding a default payment method.",
        code="resource_missing",
    )


def for_invoice(
    store: Store, customer_id: str, subscription_id: str | None
) -> PaymentMethod | None:
    """The card an automatic charge uses: the subscription's default payment method, else the
    customer's `invoice_settings.default_payment_method` (None: nothing to charge)."""
    chosen = None
    if subscription_id is not None:
        chosen = store.subscriptions.get(subscription_id).default_payment_method
    return for_customer(store, customer_id, chosen)


def for_customer(store: Store, customer_id: str, chosen: str | None) -> PaymentMethod | None:
    """`chosen` (a subscription's default card), else the customer's default card."""
    if chosen is None:
        customer = store.customers.rows.get(customer_id)
        chosen = customer.default_payment_method if customer is not None else None
    if chosen is None:
        return None
    # An id with no card behind it cannot be charged (the charge fails; the clock goes on).
    return store.payment_methods.rows.get(chosen)
