"""The billing routes: Checkout (refused while an invoice is overdue), the customer portal's
cancel flow and the overdue invoice's page, the lists of subscriptions (with access), invoices
and prices.

The routes that call Stripe run their work on the Stripe threads (`StripeCallsDep`), so a slow
Stripe cannot take the threads that the database-only routes run on.
"""

from __future__ import annotations

from typing import Annotated

import anyio
import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from sqlalchemy import RowMapping
from starlette.datastructures import State

from collab_billing import billing
from collab_billing.api.deps import (
    AdminOnly,
    ClockDep,
    GatewayDep,
    NowDep,
    SessionFactoryDep,
    SettingsDep,
    StripeCallsDep,
)
from collab_billing.api.rate_limit import PerKeyLimiter
from collab_billing.api.responses import (
    ADMIN_ERRORS,
    JSON,
    STRIPE_ERRORS,
    Responses,
    model_response,
)
from collab_billing.api.schemas import (
    AccessOut,
    CheckoutIn,
    CheckoutOut,
    ErrorResponse,
    GithubUserIdQuery,
    InvoiceOut,
    InvoicesOut,
    ManageIn,
    ManageOut,
    OverdueInvoiceOut,
    PageSize,
    PayInvoiceOut,
    PlanOut,
    PriceOut,
    PricesOut,
    StateOut,
    StripeInvoiceId,
    SubscriptionOut,
    SubscriptionsOut,
    SyncIn,
)
from collab_billing.api.strict_json import StrictJSONRoute
from collab_billing.billing.state import read_state
from collab_billing.billing.sync import sync_subscriptions
from collab_billing.db import queries
from collab_billing.db.models import BillingInvoice

router = APIRouter(
    prefix="/billing",
    tags=["billing"],
    dependencies=AdminOnly,
    responses=ADMIN_ERRORS,
    route_class=StrictJSONRoute,
)

NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "Unknown user"}}
CONFLICT: Responses = {409: {"model": ErrorResponse, "description": "Not possible in this state"}}


@router.post(
    "/subscriptions",
    response_model=CheckoutOut,
    responses={**NOT_FOUND, **CONFLICT, **STRIPE_ERRORS},
    summary="Start a Stripe Checkout for the user's subscription to a plan (seats, trial)",
)
async def create_checkout(
    body: CheckoutIn,
    request: Request,
    gateway: GatewayDep,
    settings: SettingsDep,
    stripe_calls: StripeCallsDep,
    now: NowDep,
) -> CheckoutOut:
    if body.price is None and not settings.stripe_price_id:
        raise HTTPException(503, detail="Stripe is not configured: set STRIPE_PRICE_ID")
    wanted = billing.CheckoutRequest(body.github_user_id, body.price, body.quantity, body.trial)
    try:
        started = await stripe_calls.run(
            billing.start_checkout, request.app.state.session_factory, gateway, wanted, now
        )
    finally:  # poll fast for a while: a Checkout, or a customer made whose answer was lost
        await anyio.to_thread.run_sync(request.app.state.signals.activity)
    return CheckoutOut(
        checkout_session_url=started.url,
        stripe_price_id=started.plan.stripe_price_id,
        lookup_key=started.plan.lookup_key,
        quantity=started.quantity,
        usage_price_ids=started.usage_price_ids,
        trial=started.trial_days is not None,
        trial_days=started.trial_days,
        trial_refused=started.trial_refused,
    )


@router.post(
    "/subscriptions/manage",
    response_model=ManageOut | PayInvoiceOut,
    responses={
        404: {
            "model": ErrorResponse,
            "description": "Unknown user, or not the user's subscription",
        },
        **CONFLICT,
        **STRIPE_ERRORS,
    },
    summary="Manage a subscription: a portal flow for the intent, the change itself, or the "
    "overdue invoice's page (`pay_invoice`)",
)
async def manage_subscription(
    body: ManageIn,
    request: Request,
    gateway: GatewayDep,
    stripe_calls: StripeCallsDep,
    now: NowDep,
) -> ManageOut | PayInvoiceOut:
    if body.intent == "pay_invoice":
        hosted = await anyio.to_thread.run_sync(
            billing.invoice_to_pay,
            request.app.state.session_factory,
            body.github_user_id,
            body.subscription_id,
            now,
        )
        # The user is about to pay: the reconciler polls fast to see it, as after a Checkout.
        await anyio.to_thread.run_sync(request.app.state.signals.activity)
        return PayInvoiceOut(hosted_invoice_url=hosted)
    factory = request.app.state.session_factory
    wanted = billing.ManageRequest(
        body.github_user_id, body.intent, body.subscription_id, body.price, body.quantity
    )
    result = await stripe_calls.run(billing.manage_subscription, factory, gateway, wanted)
    await anyio.to_thread.run_sync(request.app.state.signals.activity)
    if result.changed is None:
        return ManageOut(billing_portal_session_url=result.portal_url)
    return ManageOut(billing_portal_session_url=None, subscription=subscription_out(result.changed))


@router.post(
    "/subscriptions/sync",
    response_model=SubscriptionsOut,
    responses={
        404: {
            "model": ErrorResponse,
            "description": "Unknown user, or a Checkout session not the user's or unknown",
        },
        429: {"model": ErrorResponse, "description": "Too many syncs for this user (Retry-After)"},
        **STRIPE_ERRORS,
    },
    summary="Read the user's subscriptions from Stripe now (back from Checkout) and answer them",
)
async def sync_user_subscriptions(
    body: SyncIn,
    request: Request,
    gateway: GatewayDep,
    stripe_calls: StripeCallsDep,
    settings: SettingsDep,
    now: NowDep,
) -> SubscriptionsOut:
    state = request.app.state
    # Per user; per Checkout session when only that is given (its user is known only once it
    # has been read from Stripe, which the limit is there to spare).
    _limit(state.sync_limiter, body.github_user_id or body.checkout_session_id)
    github_user_id = await stripe_calls.run(
        sync_subscriptions,
        state.session_factory,
        gateway,
        body.github_user_id,
        body.checkout_session_id,
    )
    view = await anyio.to_thread.run_sync(
        billing.billing_view, state.session_factory, github_user_id, now, settings.past_due_grace()
    )
    return subscriptions_out(github_user_id, view)


def _limit(limiter: PerKeyLimiter, key: int | str | None) -> None:
    retry_after = limiter.retry_after(key)
    if retry_after is not None:
        raise HTTPException(
            429,
            detail=f"too many syncs for {key}: retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


@router.get(
    "/prices",
    response_model=PricesOut,
    summary="The prices on sale: active, recurring, with a lookup key (`BILLING_PRICES`)",
)
def list_prices(factory: SessionFactoryDep, settings: SettingsDep) -> Response:
    rows = billing.list_sellable_prices(factory, settings.billing_price_lookup_keys())
    return model_response(PricesOut(prices=[_price_out(row) for row in rows]))


def _price_out(row: RowMapping) -> PriceOut:
    divide_by = row["transform_divide_by"]
    package = {"divide_by": divide_by, "round": row["transform_round"]} if divide_by else None
    return PriceOut.model_validate({**row, "transform_quantity": package})


@router.get(
    "/state",
    response_model=StateOut,
    responses=NOT_FOUND,
    summary="The user's whole billing state: access, plan, features, and its version",
)
def get_state(
    github_user_id: Annotated[GithubUserIdQuery, Query()],
    factory: SessionFactoryDep,
    clock: ClockDep,
) -> Response:
    # The document as stored (plain JSON, the notification's payload), encoded as it is:
    # `StateOut` documents it; validating it again on each read would double the route's cost.
    # A grace that has ended by `now` is served as `blocked`, or recomputed when another
    # subscription keeps access (`state.document.served_at`).
    return Response(orjson.dumps(read_state(factory, github_user_id, clock())), media_type=JSON)


@router.get(
    "/subscriptions",
    response_model=SubscriptionsOut,
    responses=NOT_FOUND,
    summary="The user's subscriptions, their access and overdue invoices",
)
async def list_subscriptions(
    github_user_id: Annotated[GithubUserIdQuery, Query()], request: Request
) -> Response:
    # On a worker thread, as a `def` route would run, but at most `ADMIN_READERS` at once
    # (`app.state.admin_readers`): from anyio's 40, every worker thread woken to read wanted
    # the GIL back at each of its SQLite calls, and the process spent more CPU switching
    # between them than serving (bench admin: 60 context switches a request).
    state = request.app.state
    return await anyio.to_thread.run_sync(
        _list_subscriptions, state, github_user_id, limiter=state.admin_readers
    )


def _list_subscriptions(state: State, github_user_id: int) -> Response:
    # The app's state read here, not through three dependencies (factory, settings, clock):
    # FastAPI's solving of each cost more than what it returns, on the admin API's hot read.
    # The clock is read on this thread: it may block (dev mode asks the emulator).
    view = billing.billing_view(
        state.session_factory, github_user_id, state.clock(), state.settings.past_due_grace()
    )
    return model_response(subscriptions_out(github_user_id, view))


@router.get(
    "/invoices",
    response_model=InvoicesOut,
    responses=NOT_FOUND,
    summary="The user's invoices, newest first, a page at a time",
)
def list_invoices(
    github_user_id: Annotated[GithubUserIdQuery, Query()],
    factory: SessionFactoryDep,
    limit: Annotated[PageSize, Query()] = 20,
    cursor: Annotated[
        StripeInvoiceId | None,
        Query(description="`next_cursor` of the previous page: the invoices after it."),
    ] = None,
) -> Response:
    invoices, has_more = billing.list_user_invoices(factory, github_user_id, limit, cursor)
    page = InvoicesOut(
        github_user_id=github_user_id,
        invoices=[invoice_out(invoice) for invoice in invoices],
        has_more=has_more,
        next_cursor=invoices[-1].stripe_invoice_id if has_more and invoices else None,
    )
    return model_response(page)


def invoice_out(row: BillingInvoice) -> InvoiceOut:
    return InvoiceOut(
        id=row.stripe_invoice_id,
        subscription_id=row.stripe_subscription_id,
        status=row.status,
        number=row.number,
        billing_reason=row.billing_reason,
        currency=row.currency,
        amount_due=row.amount_due,
        amount_paid=row.amount_paid,
        amount_remaining=row.amount_remaining,
        hosted_invoice_url=row.hosted_invoice_url,
        attempt_count=row.attempt_count,
        next_payment_attempt=row.next_payment_attempt,
        created=row.stripe_created,
        finalized_at=row.finalized_at,
        paid_at=row.paid_at,
        due_date=row.due_date,
        period_start=row.period_start,
        period_end=row.period_end,
    )


def _plan(row: queries.SubscriptionRow) -> PlanOut | None:
    if row.stripe_price_id is None:
        return None
    return PlanOut(
        stripe_price_id=row.stripe_price_id,
        lookup_key=row.price_lookup_key,
        product_name=row.product_name,
        unit_amount=row.unit_amount,
        currency=row.currency,
        interval=row.interval,
        interval_count=row.interval_count,
    )


def subscription_out(row: queries.SubscriptionRow) -> SubscriptionOut:
    return SubscriptionOut(
        id=row.id,
        stripe_subscription_id=row.stripe_subscription_id,
        status=row.stripe_subscription_status,
        is_active=billing.is_active(row),
        is_cancelable=billing.is_cancelable(row),
        cancel_at_period_end=row.stripe_cancel_at_period_end,
        cancel_at=row.stripe_cancel_at,
        canceled_at=row.stripe_canceled_at,
        current_period_end=row.stripe_current_period_end,
        price_id=row.stripe_price_id,
        plan=_plan(row),
        quantity=row.quantity,
        trial_end=row.stripe_trial_end,
        kind=billing.subscription_kind(row),
        cancellation_reason=row.stripe_cancellation_reason,
    )


def subscriptions_out(github_user_id: int, view: billing.BillingView) -> SubscriptionsOut:
    subscriptions = [subscription_out(row) for row in view.subscriptions]
    return SubscriptionsOut(
        github_user_id=github_user_id,
        has_active_subscription=view.access.allows_use,
        subscriptions=subscriptions,
        access=AccessOut(state=view.access.state, until=view.access.until),
        overdue_invoices=[
            OverdueInvoiceOut(
                id=invoice.stripe_invoice_id,
                amount_remaining=invoice.amount_remaining,
                currency=invoice.currency,
                hosted_invoice_url=invoice.hosted_invoice_url,
            )
            for invoice in view.overdue_invoices
        ],
    )
