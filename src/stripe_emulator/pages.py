"""Minimal hosted pages behind the Checkout and portal session URLs, for humans using `dev`.

`/_emulator/pages/checkout/{id}`: "Pay" completes the session (like the control route) and
redirects to `success_url` (with `{CHECKOUT_SESSION_ID}` filled in), "Cancel" goes to
`cancel_url` ("Start trial without a card" where Checkout allows it).
`/_emulator/pages/billing_portal/{id}`: the session's flow (confirm a plan change, add a card)
or cancel at period end or now, then back to the return URL.
"""

from __future__ import annotations

from html import escape
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from stripe_emulator import portal_flows, sessions
from stripe_emulator.errors import StripeError
from stripe_emulator.money import format_amount
from stripe_emulator.objects import checkout_amount
from stripe_emulator.records import CheckoutSession
from stripe_emulator.store import Store

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto}}
button{{font-size:1rem;padding:.5rem 1rem;margin:.25rem}}</style></head>
<body><h1>{title}</h1><p><small>Stripe emulator (test mode)</small></p>{body}</body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_PAGE.format(title=escape(title), body=body), status)


async def _form(request: Request) -> dict[str, str]:
    # Parsed by hand: Starlette's form parser needs python-multipart, not a dependency here.
    return dict(parse_qsl((await request.body()).decode("utf-8", errors="replace")))


def _store(request: Request) -> Store:
    store: Store = request.app.state.emulator
    return store


async def checkout_page(request: Request) -> Response:
    store = _store(request)
    session_id = request.path_params["id"]
    with store.lock:
        session = store.checkout_sessions.rows.get(session_id)
        if session is None:
            return _page("Not found", "<p>No such Checkout session.</p>", 404)
        amount = checkout_amount(session)
        currency = session.line_items[0].price.currency if session.line_items else ""
    if session.status != "open":
        return _page("Checkout", f"<p>This session is {escape(session.status)}.</p>")
    body = (
        f"<p>Subscribe: {escape(format_amount(amount, currency))} per period.</p>"
        f'<form method="post"><input name="email" placeholder="email" '
        f'value="{escape(session.customer_email or "")}">'
        '<button name="action" value="pay">Pay</button>'
        f"{_no_card_button(session)}"
        '<button name="action" value="cancel">Cancel</button></form>'
    )
    return _page("Checkout", body)


def _no_card_button(session: CheckoutSession) -> str:
    if session.payment_method_collection != "if_required" or not session.trial_period_days:
        return ""
    return '<button name="action" value="no_card">Start trial without a card</button>'


async def checkout_submit(request: Request) -> Response:
    store = _store(request)
    form = await _form(request)
    session_id = request.path_params["id"]
    with store.lock:
        session = store.checkout_sessions.rows.get(session_id)
        if session is None:
            return _page("Not found", "<p>No such Checkout session.</p>", 404)
        if form.get("action") == "cancel":
            target = session.cancel_url
        else:
            try:
                email = str(form.get("email") or "") or None
                card = False if form.get("action") == "no_card" else None
                sessions.complete_checkout_session(store, session_id, email=email, card=card)
            except StripeError as error:
                return _page("Checkout", f"<p>{escape(error.message)}</p>", error.status)
            target = session.success_url
    if not target:
        return _page("Checkout", "<p>Done.</p>")
    return RedirectResponse(target.replace("{CHECKOUT_SESSION_ID}", session_id), 303)


async def portal_page(request: Request) -> Response:
    store = _store(request)
    with store.lock:
        session = store.portal_sessions.rows.get(request.path_params["id"])
    if session is None:
        return _page("Not found", "<p>No such portal session.</p>", 404)
    kind = session.flow["type"] if session.flow else None
    if kind in portal_flows.UPDATE_FLOWS:
        actions = '<button name="action" value="update">Confirm the change</button>'
    elif kind == "payment_method_update":
        actions = '<button name="action" value="card">Add a card</button>'
    else:
        actions = (
            '<button name="action" value="period_end">Cancel at period end</button>'
            '<button name="action" value="now">Cancel now</button>'
        )
    body = (
        f'<p>Customer {escape(session.customer)}</p><form method="post">{actions}'
        '<button name="action" value="return">Return</button></form>'
    )
    return _page("Billing portal", body)


async def portal_submit(request: Request) -> Response:
    store = _store(request)
    form = await _form(request)
    action = form.get("action")
    with store.lock:
        session = store.portal_sessions.rows.get(request.path_params["id"])
        if session is None:
            return _page("Not found", "<p>No such portal session.</p>", 404)
        try:
            if action in ("period_end", "now"):
                sessions.confirm_portal_cancel(store, session.id, immediately=action == "now")
            elif action == "update":
                portal_flows.confirm_update(store, session)
            elif action == "card":
                portal_flows.confirm_payment_method(store, session)
        except StripeError as error:
            return _page("Billing portal", f"<p>{escape(error.message)}</p>", error.status)
        target = session.return_url
        flow = session.flow or {}
        redirect = (flow.get("after_completion") or {}).get("redirect")
        if redirect and action != "return":
            target = redirect["return_url"]
    if not target:
        return _page("Billing portal", "<p>Done.</p>")
    return RedirectResponse(target, 303)


routes = [
    Route("/_emulator/pages/checkout/{id}", checkout_page, methods=["GET"]),
    Route("/_emulator/pages/checkout/{id}", checkout_submit, methods=["POST"]),
    Route("/_emulator/pages/billing_portal/{id}", portal_page, methods=["GET"]),
    Route("/_emulator/pages/billing_portal/{id}", portal_submit, methods=["POST"]),
]
