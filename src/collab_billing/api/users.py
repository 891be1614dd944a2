"""`POST /users`: create or update a user the billing service knows about."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response, status
from sqlalchemy import Row
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.api.deps import AdminOnly, SessionFactoryDep, StripeCallsDep
from collab_billing.api.responses import ADMIN_ERRORS
from collab_billing.api.schemas import UserIn, UserOut
from collab_billing.api.strict_json import StrictJSONRoute
from collab_billing.api.stripe_calls import StripeBusy
from collab_billing.billing.sync import named_but_unlinked, sync_subscriptions
from collab_billing.db import queries
from collab_billing.stripe_gateway import StripeGateway, StripeGatewayError

log = logging.getLogger(__name__)

router = APIRouter(
    tags=["users"], dependencies=AdminOnly, responses=ADMIN_ERRORS, route_class=StrictJSONRoute
)


@router.post(
    "/users",
    response_model=UserOut,
    responses={status.HTTP_201_CREATED: {"model": UserOut, "description": "User created"}},
    summary="Create or update a user (200 when updated, 201 when created)",
    description="An update changes only the fields sent: leaving out `email_address` keeps "
    "the stored address, `null` removes it. Concurrent calls for one new user create it once. "
    "A Stripe customer made for the user before the user existed (its metadata names the "
    "`github_user_id`) is linked at once, with its subscriptions.",
)
async def upsert_user(
    body: UserIn,
    request: Request,
    response: Response,
    factory: SessionFactoryDep,
    stripe_calls: StripeCallsDep,
) -> UserOut:
    user, created = await anyio.to_thread.run_sync(_upsert, factory, body)
    gateway: StripeGateway | None = request.app.state.api_gateway
    named = partial(named_but_unlinked, factory, user.id, user.github_user_id)
    if gateway is not None and await anyio.to_thread.run_sync(named):
        try:
            # Linked as a sync links it: the customer, then its subscriptions.
            await stripe_calls.run(sync_subscriptions, factory, gateway, user.github_user_id, None)
        except (StripeGatewayError, StripeBusy) as error:
            # The user is stored: the reconciler's next poll links the customer instead.
            log.warning("user %s: linking its Stripe customer failed: %s", user.id, error)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return UserOut.model_validate(user, from_attributes=True)


def _upsert(factory: sessionmaker[Session], body: UserIn) -> tuple[Row[Any], bool]:
    email_address = body.email_address if "email_address" in body.model_fields_set else queries.KEEP
    with factory() as session, session.begin():
        return queries.upsert_user(session, body.github_user_id, body.github_login, email_address)
