"""The billing cycle through the official SDK: invoices at start and renewal, payments by
test card, failed payments retried on the schedule, then canceled or unpaid, and recovery by
paying the invoice (API and hosted page)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from tests.emulator.conftest import CARD, Control, past_period_end, recurring_price

DAY = 86_400


def subscribe(client: stripe.StripeClient, ctl: Control, quantity: int = 1) -> tuple[str, str]:
    price = recurring_price(client, 1500)
    session = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [{"price": price.id, "quantity": quantity}],
            "success_url": "https://example.com/ok",
        }
    )
    done = ctl("POST", f"checkout/sessions/{session.id}/complete", {})
    return done["customer"], done["subscription"]


def decline_future_charges(client: stripe.StripeClient, customer: str, sub: str) -> str:
    """Stripe's recipe: attach pm_card_chargeCustomerFail and make it the default."""
    card = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer})
    assert card.id.startswith("pm_") and card.customer == customer and card.card
    assert card.card.last4 == "0341"
    client.v1.subscriptions.update(sub, {"default_payment_method": card.id})
    return card.id


def types_since(client: stripe.StripeClient, created: int) -> list[str]:
    found = client.v1.events.list(params={"limit": 100, "created": {"gte": created}})
    return [event.type for event in reversed(list(found.auto_paging_iter()))]


def advance(ctl: Control, days: float) -> int:
    now: int = ctl("POST", "clock/advance", {"seconds": int(days * DAY)})["now"]
    return now


def test_first_invoice_and_renewal_paid(client: stripe.StripeClient, ctl: Control) -> None:
    customer, sub_id = subscribe(client, ctl, quantity=3)
    first = client.v1.invoices.list(params={"customer": customer})
    assert len(first.data) == 1
    invoice = first.data[0]
    assert (invoice.status, invoice.amount_due, invoice.amount_paid) == ("paid", 4500, 4500)
    assert invoice.amount_remaining == 0 and invoice.billing_reason == "subscription_create"
    assert invoice.parent and invoice.parent.subscription_details
    assert invoice.parent.subscription_details.subscription == sub_id
    assert invoice.hosted_invoice_url and invoice.id in invoice.hosted_invoice_url
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.latest_invoice == invoice.id

    mark = ctl("GET", "clock")["now"]
    past_period_end(ctl, client, sub_id)
    assert types_since(client, mark) == [
        "customer.subscription.updated",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
    ]
    renewed = client.v1.invoices.list(params={"subscription": sub_id, "limit": 1}).data[0]
    assert renewed.billing_reason == "subscription_cycle"
    assert (renewed.status, renewed.amount_paid, renewed.attempt_count) == ("paid", 4500, 1)
    # Stripe's invoice period looks back: the period that ended; its lines carry the new one.
    ended = sub["items"].data[0]
    assert (renewed.period_start, renewed.period_end) == (
        ended.current_period_start,
        ended.current_period_end,
    )
    assert renewed.lines.data[0].period.start == ended.current_period_end
    assert client.v1.subscriptions.retrieve(sub_id).latest_invoice == renewed.id
    assert client.v1.invoices.retrieve(renewed.id).status == "paid"
    assert [i.id for i in client.v1.invoices.list(params={"status": "open"}).data] == []


def test_declined_renewal_retries_then_cancels(client: stripe.StripeClient, ctl: Control) -> None:
    customer, sub_id = subscribe(client, ctl)
    decline_future_charges(client, customer, sub_id)
    mark = ctl("GET", "clock")["now"]
    past_period_end(ctl, client, sub_id)
    assert types_since(client, mark)[-3:] == [
        "invoice.payment_failed",
        "invoice.updated",
        "customer.subscription.updated",
    ]
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "past_due"
    invoice = client.v1.invoices.retrieve(sub.latest_invoice or "")
    assert (invoice.status, invoice.attempt_count, invoice.amount_remaining) == ("open", 1, 1500)
    failed_at = invoice.status_transitions.finalized_at or 0
    assert invoice.next_payment_attempt == failed_at + 3 * DAY

    advance(ctl, 3)
    invoice = client.v1.invoices.retrieve(invoice.id)
    assert invoice.attempt_count == 2
    assert invoice.next_payment_attempt == failed_at + 8 * DAY
    advance(ctl, 5)
    assert client.v1.invoices.retrieve(invoice.id).attempt_count == 3
    assert client.v1.subscriptions.retrieve(sub_id).status == "past_due"
    advance(ctl, 7)
    invoice = client.v1.invoices.retrieve(invoice.id)
    assert (invoice.attempt_count, invoice.next_payment_attempt) == (4, None)
    assert invoice.status == "open"
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "canceled"
    assert sub.cancellation_details and sub.cancellation_details.reason == "payment_failed"
    listed = client.v1.invoices.list(params={"customer": customer, "status": "open"})
    assert [i.id for i in listed.data] == [invoice.id]


def test_an_invoice_marked_uncollectible_is_not_retried_but_can_be_paid(
    client: stripe.StripeClient, ctl: Control
) -> None:
    customer, sub_id = subscribe(client, ctl)
    decline_future_charges(client, customer, sub_id)
    past_period_end(ctl, client, sub_id)
    invoice_id = client.v1.subscriptions.retrieve(sub_id).latest_invoice or ""
    mark = ctl("GET", "clock")["now"]
    marked = client.v1.invoices.mark_uncollectible(invoice_id)
    assert (marked.status, marked.next_payment_attempt) == ("uncollectible", None)
    assert marked.status_transitions.marked_uncollectible_at == mark
    assert types_since(client, mark)[-1] == "invoice.marked_uncollectible"
    with pytest.raises(stripe.InvalidRequestError, match="only mark an open invoice"):
        client.v1.invoices.mark_uncollectible(invoice_id)
    advance(ctl, 3)
    assert client.v1.invoices.retrieve(invoice_id).attempt_count == 1  # not retried
    paid = client.v1.invoices.pay(invoice_id, {"payment_method": "pm_card_visa"})
    assert (paid.status, paid.amount_remaining) == ("paid", 0)
    assert client.v1.subscriptions.retrieve(sub_id).status == "active"


def test_one_advance_past_a_cancellation_by_retries_and_the_period_end(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """A past-due subscription set to cancel at its period's end, whose last retry cancels it
    first, within one advance: the advance goes through, and the other subscriptions' turns
    in it happen (it failed with a 400 on the second cancellation, dropping the rest)."""
    customer, sub_id = subscribe(client, ctl)
    decline_future_charges(client, customer, sub_id)
    past_period_end(ctl, client, sub_id)
    client.v1.subscriptions.update(sub_id, {"cancel_at_period_end": True})
    _, other = subscribe(client, ctl)
    advance(ctl, 40)  # the retries end at +15 days, the period at +28 to +31
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "canceled"
    assert sub.cancellation_details and sub.cancellation_details.reason == "payment_failed"
    invoices = client.v1.invoices.list(params={"subscription": other}).data
    assert [i.billing_reason for i in invoices] == ["subscription_cycle", "subscription_create"]


def test_unpaid_setting_and_recovery_by_api(client: stripe.StripeClient, ctl: Control) -> None:
    assert ctl("POST", "billing", {"retry_days": [1], "after_retries": "unpaid"}) == {
        "retry_days": [1],
        "after_retries": "unpaid",
    }
    customer, sub_id = subscribe(client, ctl)
    decline_future_charges(client, customer, sub_id)
    past_period_end(ctl, client, sub_id, days=1.1)
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "unpaid"
    invoice_id = sub.latest_invoice or ""
    with pytest.raises(stripe.CardError) as declined:
        client.v1.invoices.pay(invoice_id)
    assert declined.value.code == "card_declined" and declined.value.http_status == 402
    assert client.v1.invoices.retrieve(invoice_id).attempt_count == 3
    paid = client.v1.invoices.pay(invoice_id, {"payment_method": "pm_card_visa"})
    assert (paid.status, paid.amount_remaining, paid.amount_paid) == ("paid", 0, 1500)
    assert client.v1.subscriptions.retrieve(sub_id).status == "active"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(invoice_id)


def test_customer_default_and_hosted_page(client: stripe.StripeClient, ctl: Control) -> None:
    customer, sub_id = subscribe(client, ctl)
    card = client.v1.payment_methods.attach("pm_card_chargeCustomerFail", {"customer": customer})
    client.v1.subscriptions.update(sub_id, {"default_payment_method": ""})
    updated = client.v1.customers.update(
        customer, {"invoice_settings": {"default_payment_method": card.id}}
    )
    assert updated.invoice_settings and updated.invoice_settings.default_payment_method == card.id
    past_period_end(ctl, client, sub_id)
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "past_due"
    invoice = client.v1.invoices.retrieve(sub.latest_invoice or "")
    url = invoice.hosted_invoice_url or ""
    page = ctl.http.get(url)
    assert page.status_code == 200 and "Pay" in page.text
    declined = ctl.http.post(url, data={"card": "pm_card_chargeCustomerFail"})
    assert declined.status_code == 402
    paid = ctl.http.post(url, data={"card": "pm_card_visa"})
    assert paid.status_code == 200 and "paid" in paid.text
    assert client.v1.invoices.retrieve(invoice.id).status == "paid"
    sub = client.v1.subscriptions.retrieve(sub_id)
    assert sub.status == "active"
    # Paying on the page with a new card made it the subscription's default: renewals pay.
    past_period_end(ctl, client, sub_id)
    renewed = client.v1.subscriptions.retrieve(sub_id)
    assert renewed.status == "active" and renewed.latest_invoice != invoice.id


def test_bad_payment_method_input(client: stripe.StripeClient, ctl: Control) -> None:
    customer, sub_id = subscribe(client, ctl)
    other = client.v1.customers.create()
    foreign = client.v1.payment_methods.attach("pm_card_visa", {"customer": other.id})
    cases: list[Any] = [
        lambda: client.v1.subscriptions.update(sub_id, {"default_payment_method": foreign.id}),
        lambda: client.v1.customers.update(
            customer, {"invoice_settings": {"default_payment_method": "pm_nope"}}
        ),
        lambda: client.v1.payment_methods.attach("pm_nope", {"customer": customer}),
        lambda: client.v1.payment_methods.attach(foreign.id, {"customer": customer}),
        lambda: client.v1.invoices.retrieve("in_nope"),
        lambda: client.v1.invoices.list(params={"status": "weird"}),  # type: ignore[typeddict-item]
    ]
    for case in cases:
        with pytest.raises(stripe.InvalidRequestError):
            case()
    declined = ctl.raw("POST", "checkout/sessions/cs_test_nope/complete", {})
    assert declined.status_code == 404
    assert ctl.raw("POST", "billing", {"after_retries": "never"}).status_code == 400
    assert ctl.raw("POST", "billing", {"retry_days": [0]}).status_code == 400


def test_checkout_with_a_declining_card_changes_nothing(
    client: stripe.StripeClient, ctl: Control
) -> None:
    price = recurring_price(client)
    session = client.v1.checkout.sessions.create(
        params={"mode": "subscription", "line_items": [{"price": price.id, "quantity": 1}]}
    )
    answer = ctl.raw(
        "POST",
        f"checkout/sessions/{session.id}/complete",
        {"payment_method": "pm_card_chargeCustomerFail"},
    )
    assert answer.status_code == 402
    assert answer.json()["error"]["code"] == "card_declined"
    assert client.v1.checkout.sessions.retrieve(session.id).status == "open"
    assert client.v1.invoices.list().data == []


@pytest.mark.parametrize(
    ("behavior", "status"),
    [("create_invoice", "past_due"), ("pause", "paused"), ("cancel", "canceled")],
)
def test_cardless_trial_end(
    client: stripe.StripeClient, ctl: Control, behavior: str, status: str
) -> None:
    """A trial without a card: $0 first invoice; at its end Stripe invoices (and the charge
    fails), pauses or cancels, per `trial_settings.end_behavior.missing_payment_method`."""
    price = recurring_price(client)
    customer = client.v1.customers.create()
    sub = client.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": price.id}],
            "trial_period_days": 7,
            "trial_settings": {"end_behavior": {"missing_payment_method": behavior}},  # type: ignore[typeddict-item]
        }
    )
    advance(ctl, 7.1)
    assert client.v1.subscriptions.retrieve(sub.id).status == status
    invoices = client.v1.invoices.list(params={"subscription": sub.id}).data
    first = ["paid"]  # the trial's $0 invoice
    assert [i.status for i in invoices] == (
        ["open", *first] if behavior == "create_invoice" else first
    )


def api_subscription(
    client: stripe.StripeClient, customer: dict[str, Any], **extra: Any
) -> tuple[str, stripe.Subscription]:
    price = recurring_price(client, 1500)
    customer_id = client.v1.customers.create(params=customer).id  # type: ignore[arg-type]
    params = {"customer": customer_id, "items": [{"price": price.id}], **extra}
    return customer_id, client.v1.subscriptions.create(params=params)  # type: ignore[arg-type]


def test_an_api_subscription_is_paid_by_the_customers_default_card(
    client: stripe.StripeClient,
) -> None:
    """Stripe's test recipe (the same token as the card and the default) pays the first invoice."""
    customer, sub = api_subscription(client, CARD)
    [invoice] = client.v1.invoices.list(params={"customer": customer}).data
    assert (sub.status, sub.latest_invoice) == ("active", invoice.id)
    assert (invoice.billing_reason, invoice.status, invoice.amount_paid) == (
        "subscription_create",
        "paid",
        1500,
    )
    default = client.v1.customers.retrieve(customer).invoice_settings.default_payment_method
    assert isinstance(default, str) and default.startswith("pm_") and default != "pm_card_visa"


def test_an_api_subscription_without_a_card_is_incomplete_until_paid_or_expired(
    client: stripe.StripeClient, ctl: Control
) -> None:
    """`allow_incomplete` (the default): created `incomplete`, its first invoice open after
    one failed attempt; paid on the hosted page it becomes `active`; unpaid, it expires after
    23 hours into `incomplete_expired`, the invoice voided."""
    customer, paid_later = api_subscription(client, {})
    [invoice] = client.v1.invoices.list(params={"customer": customer}).data
    assert (paid_later.status, invoice.status, invoice.attempt_count) == ("incomplete", "open", 1)
    assert invoice.next_payment_attempt is None  # a first invoice is not retried
    client.v1.invoices.pay(invoice.id, {"payment_method": "pm_card_visa"})
    assert client.v1.subscriptions.retrieve(paid_later.id).status == "active"

    customer, expiring = api_subscription(client, {})
    advance(ctl, 1)
    assert client.v1.subscriptions.retrieve(expiring.id).status == "incomplete_expired"
    [voided] = client.v1.invoices.list(params={"customer": customer}).data
    assert voided.status == "void"


def test_payment_behaviors_of_a_new_subscription(client: stripe.StripeClient) -> None:
    """`error_if_incomplete` creates nothing when the first payment fails (the payment's own
    error); `default_incomplete` leaves the invoice unattempted; `pending_if_incomplete` is
    for updates only."""
    for customer_params, error in (({}, stripe.InvalidRequestError), (
        {"payment_method": "pm_card_chargeCustomerFail",
         "invoice_settings": {"default_payment_method": "pm_card_chargeCustomerFail"}},
        stripe.CardError,
    )):  # fmt: skip
        customer = client.v1.customers.create(params=customer_params).id  # type: ignore[arg-type]
        price = recurring_price(client, 1500)
        with pytest.raises(error):
            client.v1.subscriptions.create(
                params={
                    "customer": customer,
                    "items": [{"price": price.id}],
                    "payment_behavior": "error_if_incomplete",
                }
            )
        assert client.v1.subscriptions.list(params={"customer": customer}).data == []
        assert client.v1.invoices.list(params={"customer": customer}).data == []

    customer, sub = api_subscription(client, CARD, payment_behavior="default_incomplete")
    [invoice] = client.v1.invoices.list(params={"customer": customer}).data
    assert (sub.status, invoice.status, invoice.attempt_count) == ("incomplete", "open", 0)

    with pytest.raises(stripe.InvalidRequestError) as refused:
        api_subscription(client, CARD, payment_behavior="pending_if_incomplete")
    assert refused.value.param == "payment_behavior"


def test_a_new_customers_default_card_must_be_the_one_it_is_given(
    client: stripe.StripeClient,
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.customers.create(
            params={"invoice_settings": {"default_payment_method": "pm_card_visa"}}
        )
    assert refused.value.param == "invoice_settings[default_payment_method]"
    assert client.v1.customers.list().data == []
