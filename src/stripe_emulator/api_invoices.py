"""`/v1/invoices` and `/v1/payment_methods` (the billing cycle is in invoices.py)."""

from __future__ import annotations

from stripe_emulator import invoices, payment_methods
from stripe_emulator.api import Call, created_range, list_args, list_table, route
from stripe_emulator.billing_records import Invoice
from stripe_emulator.invoice_objects import invoice as render_invoice
from stripe_emulator.invoice_objects import payment_method as render_payment_method
from stripe_emulator.objects import Json

INVOICE_STATUSES = ("draft", "open", "paid", "uncollectible", "void")


@route("POST", "/v1/payment_methods/{id}/attach")
def attach_payment_method(call: Call) -> Json:
    p = call.params
    customer = p.string("customer", required=True) or ""
    p.ignore("customer_account")
    p.finish()
    return render_payment_method(payment_methods.attach(call.store, call.id, customer))


@route("POST", "/v1/payment_methods/{id}/detach")
def detach_payment_method(call: Call) -> Json:
    call.params.finish()
    return render_payment_method(payment_methods.detach(call.store, call.id))


@route("GET", "/v1/payment_methods/{id}")
def retrieve_payment_method(call: Call) -> Json:
    call.params.finish()
    return render_payment_method(call.store.payment_methods.get(call.id))


@route("GET", "/v1/invoices/{id}")
def retrieve_invoice(call: Call) -> Json:
    call.params.finish()
    return render_invoice(call.store.invoices.get(call.id))


@route("GET", "/v1/invoices")
def list_invoices(call: Call) -> Json:
    p = call.params
    args = list_args(p)
    customer = p.string("customer")
    subscription = p.string("subscription")
    status = p.string("status", choices=INVOICE_STATUSES)
    collection = p.string("collection_method")
    created = created_range(p)
    p.ignore("due_date", "customer_account")
    p.finish()

    def keep(record: Invoice) -> bool:
        if customer is not None and record.customer != customer:
            return False
        if subscription is not None and record.subscription != subscription:
            return False
        if status is not None and record.status != status:
            return False
        if collection not in (None, "charge_automatically"):
            return False
        gte, lt = created
        return (gte is None or record.created >= gte) and (lt is None or record.created < lt)

    return list_table(call.store.invoices, args, "/v1/invoices", render_invoice, keep)


@route("POST", "/v1/invoices/{id}/pay")
def pay_invoice(call: Call) -> Json:
    p = call.params
    card = p.string("payment_method") or None
    out_of_band = bool(p.boolean("paid_out_of_band"))
    p.ignore("forgive", "mandate", "off_session", "source")
    p.finish()
    return render_invoice(invoices.pay(call.store, call.id, card, out_of_band))


@route("POST", "/v1/invoices/{id}/void")
def void_invoice(call: Call) -> Json:
    call.params.finish()
    return render_invoice(invoices.void(call.store, call.id))


@route("POST", "/v1/invoices/{id}/mark_uncollectible")
def mark_uncollectible(call: Call) -> Json:
    call.params.finish()
    return render_invoice(invoices.mark_uncollectible(call.store, call.id))
