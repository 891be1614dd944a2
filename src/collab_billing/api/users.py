"""`POST /users`: create or update a user the billing service knows about."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from collab_billing.api.deps import AdminOnly, SessionDep
from collab_billing.api.responses import ADMIN_ERRORS
from collab_billing.api.schemas import UserIn, UserOut
from collab_billing.api.strict_json import StrictJSONRoute
from collab_billing.db import queries

router = APIRouter(
    tags=["users"], dependencies=AdminOnly, responses=ADMIN_ERRORS, route_class=StrictJSONRoute
)


@router.post(
    "/users",
    response_model=UserOut,
    responses={status.HTTP_201_CREATED: {"model": UserOut, "description": "User created"}},
    summary="Create or update a user (200 when updated, 201 when created)",
    description="An update changes only the fields sent: leaving out `email_address` keeps "
    "the stored address, `null` removes it. Concurrent calls for one new user create it once.",
)
def upsert_user(body: UserIn, session: SessionDep, response: Response) -> UserOut:
    email_address = body.email_address if "email_address" in body.model_fields_set else queries.KEEP
    with session.begin():
        user, created = queries.upsert_user(
            session, body.github_user_id, body.github_login, email_address
        )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return UserOut.model_validate(user, from_attributes=True)
