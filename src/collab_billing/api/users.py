"""`POST /users`: create or update a user the billing service knows about."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from collab_billing.api.deps import AdminOnly, SessionDep
from collab_billing.api.responses import AUTH_ERRORS
from collab_billing.api.schemas import UserIn, UserOut
from collab_billing.db import queries

router = APIRouter(tags=["users"], dependencies=AdminOnly, responses=AUTH_ERRORS)


@router.post(
    "/users",
    response_model=UserOut,
    responses={status.HTTP_201_CREATED: {"model": UserOut, "description": "User created"}},
    summary="Create or update a user (200 when updated, 201 when created)",
)
def upsert_user(body: UserIn, session: SessionDep, response: Response) -> UserOut:
    with session.begin():
        user, created = queries.upsert_user(
            session, body.github_user_id, body.github_login, body.email_address
        )
        out = UserOut.model_validate(user, from_attributes=True)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return out
