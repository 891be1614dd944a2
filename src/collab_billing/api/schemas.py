"""Request and response models of the admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints

# Strict: "123" is not an id, and unknown fields are an error rather than silently dropped.
GithubUserId = Annotated[int, Field(strict=True, ge=1, le=2**63 - 1, examples=[12345])]
GithubLogin = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9-]+$")
]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["user not found"])


class UserIn(StrictModel):
    github_user_id: GithubUserId
    github_login: GithubLogin
    email_address: EmailStr | None = None


class UserOut(BaseModel):
    id: int
    github_user_id: int
    github_login: str
    email_address: str | None
    created_at: datetime
