"""The billing routes: Checkout, the customer portal's cancel flow, and the list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response

from collab_billing import billing
from collab_billing.api.deps import AdminOnly, SettingsDep
from collab_billing.api.responses import AUTH_ERRORS, STRIPE_ERRORS, JSONBytes, Responses
from collab_billing.api.schemas import (
    CheckoutIn,
    CheckoutOut,
    ErrorResponse,
    GithubUserIdQuery,
    ManageIn,
    ManageOut,
    SubscriptionsOut,
)
from collab_billing.db import queries
from collab_billing.stripe_gateway import StripeGateway

router = APIRouter(
    prefix="/billing", tags=["billing"], dependencies=AdminOnly, responses=AUTH_ERRORS
)

NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "Unknown user"}}
CONFLICT: Responses = {409: {"model": ErrorResponse, "description": "Not possible in this state"}}


def get_gateway(request: Request) -> StripeGateway:
    gateway: StripeGateway | None = request.app.state.gateway
    if gateway is None:
        raise HTTPException(503, detail="Stripe is not configured: set STRIPE_API_KEY")
    return gateway


GatewayDep = Annotated[StripeGateway, Depends(get_gateway)]


@router.post(
    "/subscriptions",
    response_model=CheckoutOut,
    responses={**NOT_FOUND, **CONFLICT, **STRIPE_ERRORS},
    summary="Start a Stripe Checkout for the user's subscription",
)
def create_checkout(
    body: CheckoutIn, request: Request, gateway: GatewayDep, settings: SettingsDep
) -> CheckoutOut:
    if not settings.stripe_price_id:
        raise HTTPException(503, detail="Stripe is not configured: set STRIPE_PRICE_ID")
    url = billing.start_checkout(
        request.app.state.session_factory, gateway, settings.stripe_price_id, body.github_user_id
    )
    return CheckoutOut(checkout_session_url=url)


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
    summary="Open the customer portal's flow for an intent (`cancel`)",
)
def manage_subscription(body: ManageIn, request: Request, gateway: GatewayDep) -> ManageOut:
    url = billing.open_cancel_portal(
        request.app.state.session_factory, gateway, body.github_user_id, body.subscription_id
    )
    return ManageOut(billing_portal_session_url=url)


@router.get(
    "/subscriptions",
    response_model=SubscriptionsOut,
    responses=NOT_FOUND,
    summary="The user's subscriptions and whether any is active",
)
def list_subscriptions(
    request: Request, github_user_id: Annotated[GithubUserIdQuery, Query()]
) -> Response:
    rows = billing.list_user_subscriptions(request.app.state.session_factory, github_user_id)
    return JSONBytes(subscriptions_document(github_user_id, rows))


def subscriptions_document(
    github_user_id: int, rows: Sequence[queries.SubscriptionRow]
) -> dict[str, Any]:
    """The `SubscriptionsOut` document from `queries.USER_SUBSCRIPTIONS` rows, built directly:
    the rows are trusted (our database), so pydantic's validation would only cost time."""
    subscriptions = [
        {
            "id": row.id,
            "stripe_subscription_id": row.stripe_subscription_id,
            "status": row.stripe_subscription_status,
            "is_active": billing.is_active(row),
            "is_cancelable": billing.is_cancelable(row),
            "cancel_at_period_end": row.stripe_cancel_at_period_end,
            "cancel_at": row.stripe_cancel_at,
            "canceled_at": row.stripe_canceled_at,
            "current_period_end": row.stripe_current_period_end,
            "price_id": row.stripe_price_id,
        }
        for row in rows
    ]
    return {
        "github_user_id": github_user_id,
        "has_active_subscription": any(s["is_active"] for s in subscriptions),
        "subscriptions": subscriptions,
    }
