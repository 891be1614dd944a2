"""The billing routes: Checkout, the customer portal's cancel flow, the lists of subscriptions
and of prices.

The routes that call Stripe run their work on the Stripe threads (`StripeCallsDep`), so a slow
Stripe cannot take the threads that the database-only routes run on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from collab_billing import billing
from collab_billing.api.deps import (
    AdminOnly,
    GatewayDep,
    SessionFactoryDep,
    SettingsDep,
    StripeCallsDep,
)
from collab_billing.api.responses import ADMIN_ERRORS, STRIPE_ERRORS, Responses
from collab_billing.api.schemas import (
    CheckoutIn,
    CheckoutOut,
    ErrorResponse,
    GithubUserIdQuery,
    ManageIn,
    ManageOut,
    PlanOut,
    PriceOut,
    PricesOut,
    StateOut,
    SubscriptionOut,
    SubscriptionsOut,
)
from collab_billing.api.strict_json import StrictJSONRoute
from collab_billing.billing.state import read_state
from collab_billing.db import queries

router = APIRouter(
    prefix="/billing",
    tags=["billing"],
    dependencies=AdminOnly,
    responses=ADMIN_ERRORS,
    route_class=StrictJSONRoute,
)

NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "Unknown user"}}
JSON = "application/json"
NOT_FOR_SALE: Responses = {422: {"description": "Invalid request, or a price not for sale"}}
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
) -> CheckoutOut:
    if body.price is None and not settings.stripe_price_id:
        raise HTTPException(503, detail="Stripe is not configured: set STRIPE_PRICE_ID")
    wanted = billing.CheckoutRequest(body.github_user_id, body.price, body.quantity, body.trial)
    started = await stripe_calls.run(
        billing.start_checkout, request.app.state.session_factory, gateway, wanted
    )
    return CheckoutOut(
        checkout_session_url=started.url,
        stripe_price_id=started.plan.stripe_price_id,
        lookup_key=started.plan.lookup_key,
        quantity=started.quantity,
        trial=started.trial_days is not None,
        trial_days=started.trial_days,
        trial_refused=started.trial_refused,
    )


@router.post(
    "/subscriptions/manage",
    response_model=ManageOut,
    responses={
        404: {
            "model": ErrorResponse,
            "description": "Unknown user, or not the user's subscription",
        },
        **CONFLICT,
        **STRIPE_ERRORS,
    },
    summary="Manage a subscription: a portal flow for the intent, or the change itself",
)
async def manage_subscription(
    body: ManageIn, request: Request, gateway: GatewayDep, stripe_calls: StripeCallsDep
) -> ManageOut:
    factory = request.app.state.session_factory
    wanted = billing.ManageRequest(
        body.github_user_id, body.intent, body.subscription_id, body.price, body.quantity
    )
    result = await stripe_calls.run(billing.manage_subscription, factory, gateway, wanted)
    if result.changed is None:
        return ManageOut(billing_portal_session_url=result.portal_url)
    changed = subscriptions_out(body.github_user_id, [result.changed]).subscriptions[0]
    return ManageOut(billing_portal_session_url=None, subscription=changed)


@router.get(
    "/prices",
    response_model=PricesOut,
    summary="The prices on sale: active, recurring, with a lookup key (`BILLING_PRICES`)",
)
def list_prices(factory: SessionFactoryDep, settings: SettingsDep) -> PricesOut:
    rows = billing.list_sellable_prices(factory, settings.billing_price_lookup_keys())
    return PricesOut(prices=[PriceOut.model_validate(row) for row in rows])


@router.get(
    "/state",
    response_model=StateOut,
    responses=NOT_FOUND,
    summary="The user's whole billing state: access, plan, features, and its version",
)
def get_state(
    github_user_id: Annotated[GithubUserIdQuery, Query()], factory: SessionFactoryDep
) -> Response:
    # The document as stored (plain JSON, the notification's payload), encoded as it is:
    # `StateOut` documents it; validating it again on each read would double the route's cost.
    return Response(orjson.dumps(read_state(factory, github_user_id)), media_type=JSON)


@router.get(
    "/subscriptions",
    response_model=SubscriptionsOut,
    responses=NOT_FOUND,
    summary="The user's subscriptions and whether any is active",
)
def list_subscriptions(
    github_user_id: Annotated[GithubUserIdQuery, Query()], factory: SessionFactoryDep
) -> SubscriptionsOut:
    rows = billing.list_user_subscriptions(factory, github_user_id)
    return subscriptions_out(github_user_id, rows)


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


def subscriptions_out(
    github_user_id: int, rows: Sequence[queries.SubscriptionRow]
) -> SubscriptionsOut:
    subscriptions = [
        SubscriptionOut(
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
        for row in rows
    ]
    return SubscriptionsOut(
        github_user_id=github_user_id,
        has_active_subscription=any(s.is_active for s in subscriptions),
        subscriptions=subscriptions,
    )
