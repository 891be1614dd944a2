"""The hosted invoice page and the billing cycle's control route.

- `/_emulator/pages/invoices/{id}` (an invoice's `hosted_invoice_url`): shows the amount and
  status; "Pay" with a card that works (`pm_card_visa`, attached to the customer and made the
  subscription's default payment method, as paying on Stripe's page with a new card does
  when the subscription's payment settings save it) or the declining test card.
- `GET|POST /_emulator/billing` `{"retry_days": [3, 5, 7], "after_retries": "cancel"|"unpaid"}`:
  the failed-payment settings (Stripe's dashboard "Manage failed payments").
"""

from __future__ import annotations

from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stripe_emulator import invoices, payment_methods
from stripe_emulator.api import error_response, json_response
from stripe_emulator.errors import StripeError, bad_request
from stripe_emulator.money import format_amount
from stripe_emulator.pages import _form, _page, _store
from stripe_emulator.records import evolve
from stripe_emulator.subscriptions import save


async def invoice_page(request: Request) -> Response:
    store = _store(request)
    with store.lock:
        invoice = store.invoices.rows.get(request.path_params["id"])
    if invoice is None or invoice.status == "draft":
        return _page("Not found", "<p>No such invoice.</p>", 404)
    amount = escape(format_amount(invoice.amount_remaining, invoice.currency))
    body = f"<p>Invoice {escape(invoice.number)}: {escape(invoice.status)}.</p>"
    if invoice.status == "open":
        body += (
            f'<p>Amount due: {amount}</p><form method="post">'
            '<button name="card" value="pm_card_visa">Pay with Visa 4242</button>'
            '<button name="card" value="pm_card_chargeCustomerFail">Pay with Visa 0341 '
            "(declines)</button></form>"
        )
    return _page("Invoice", body)


async def invoice_submit(request: Request) -> Response:
    store = _store(request)
    form = await _form(request)
    token = form.get("card", "pm_card_visa")
    if token not in payment_methods.TEST_TOKENS:
        return _page("Invoice", "<p>Unknown card.</p>", 400)
    with store.lock:
        invoice = store.invoices.rows.get(request.path_params["id"])
        if invoice is None:
            return _page("Not found", "<p>No such invoice.</p>", 404)
        try:
            card = payment_methods.attach(store, token, invoice.customer)
            if invoice.subscription is not None and not card.fails:
                sub = store.subscriptions.rows[invoice.subscription]
                if sub.status != "canceled":
                    save(store, sub, evolve(sub, default_payment_method=card.id))
            paid = invoices.pay(store, invoice.id, card.id)
        except StripeError as error:
            return _page("Invoice", f"<p>{escape(error.message)}</p>", error.status)
    return _page("Invoice", f"<p>Paid. Invoice {escape(paid.number)} is {paid.status}.</p>")


async def billing_settings(request: Request) -> Response:
    store = _store(request)
    try:
        if request.method == "POST":
            body = await request.json() if (await request.body()).strip() else {}
            _apply_settings(store.billing_settings, body)
    except StripeError as error:
        return error_response(error)
    except ValueError:
        return error_response(bad_request("The body is not valid JSON."))
    settings = store.billing_settings
    return json_response(
        200, {"retry_days": list(settings.retry_days), "after_retries": settings.after_retries}
    )


def _apply_settings(settings: Any, body: Any) -> None:
    if not isinstance(body, dict) or set(body) - {"retry_days", "after_retries"}:
        raise bad_request("The body takes `retry_days` and `after_retries` only.")
    days = body.get("retry_days", list(settings.retry_days))
    if not isinstance(days, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 60 for d in days
    ):
        raise bad_request("`retry_days` must be a list of whole days (1..60).", "retry_days")
    after = body.get("after_retries", settings.after_retries)
    if after not in ("cancel", "unpaid"):
        raise bad_request("`after_retries` must be `cancel` or `unpaid`.", "after_retries")
    settings.retry_days = tuple(days)
    settings.after_retries = after


routes = [
    Route("/_emulator/pages/invoices/{id}", invoice_page, methods=["GET"]),
    Route("/_emulator/pages/invoices/{id}", invoice_submit, methods=["POST"]),
    Route("/_emulator/billing", billing_settings, methods=["GET", "POST"]),
]
