"""Request and response models of the admin API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)


def _number_not_text(value: object) -> object:
    # JSON numbers only: "123" and true are not ids (110.0 is: JSON has one number type).
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number, not a string or boolean")
    return value


# Ids stay within the integers every JSON peer represents exactly (RFC 8259 section 6):
# a larger number may already have been rounded by the client that sent it.
MAX_JSON_SAFE_INTEGER = 2**53 - 1
BigId = Annotated[int, Field(ge=1, le=MAX_JSON_SAFE_INTEGER), BeforeValidator(_number_not_text)]
GithubUserId = Annotated[BigId, Field(examples=[12345])]
# Query strings are text, so the query parameter is parsed leniently ("12345" -> 12345).
GithubUserIdQuery = Annotated[int, Field(ge=1, le=MAX_JSON_SAFE_INTEGER, examples=[12345])]
GithubLogin = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9-]+$")
]


class StrictModel(BaseModel):
    """Unknown fields are an error rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    detail: str = Field(examples=["user not found"])


# A plain shape check: deliverability is the mail system's business, and a validator that
# refuses reserved test domains would turn away addresses the schema says are fine.
# U+0085 (NEL) is named: it is whitespace to pydantic's regex engine (Unicode White_Space) but
# not to the ECMAScript `\s` of JSON Schema, so the published pattern would accept it. Control
# characters are no part of an address, and PostgreSQL cannot store NUL in text at all.
_ADDRESS_PART = r"[^@\s\u0000-\u001f\u007f\u0085]+"
EmailAddress = Annotated[
    str,
    StringConstraints(
        strict=True,
        max_length=320,
        pattern=rf"^{_ADDRESS_PART}@{_ADDRESS_PART}\.{_ADDRESS_PART}$",
    ),
    Field(examples=["octocat@example.com"]),
]


class UserIn(StrictModel):
    github_user_id: GithubUserId
    github_login: GithubLogin
    email_address: EmailAddress | None = Field(
        default=None,
        description=(
            "Left out: a new user has none and an existing user keeps theirs. "
            "`null`: the stored address is removed."
        ),
    )


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class UserOut(BaseModel):
    id: int
    github_user_id: int
    github_login: str
    email_address: str | None
    created_at: UtcDatetime


StripeSubscriptionId = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^sub_[A-Za-z0-9_]{1,250}$"),
    Field(examples=["sub_1QExample"]),
]
OurSubscriptionId = BigId


class CheckoutIn(StrictModel):
    github_user_id: GithubUserId


class CheckoutOut(BaseModel):
    checkout_session_url: str


class ManageIn(StrictModel):
    github_user_id: GithubUserId
    intent: Literal["cancel"] = Field(description="What the user wants to do. Only `cancel`.")
    subscription_id: OurSubscriptionId | StripeSubscriptionId | None = Field(
        default=None,
        description="Our id or Stripe's `sub_...`; omitted: the user's only active subscription.",
    )


class ManageOut(BaseModel):
    billing_portal_session_url: str


class SubscriptionOut(BaseModel):
    id: int
    stripe_subscription_id: str
    status: str
    is_active: bool
    is_cancelable: bool
    cancel_at_period_end: bool
    cancel_at: UtcDatetime | None
    canceled_at: UtcDatetime | None
    current_period_end: UtcDatetime | None
    price_id: str | None


class SubscriptionsOut(BaseModel):
    github_user_id: int
    has_active_subscription: bool
    subscriptions: list[SubscriptionOut]


class PriceOut(BaseModel):
    lookup_key: str
    stripe_price_id: str
    product_name: str | None
    unit_amount: int | None
    currency: str
    interval: str
    interval_count: int
    usage_type: str


class PricesOut(BaseModel):
    prices: list[PriceOut]


class AccessOut(BaseModel):
    state: Literal["active", "grace", "blocked", "none"]
    until: str | None = Field(description="ISO 8601 UTC: when `grace` ends (else null).")


class StatePlanOut(BaseModel):
    stripe_subscription_id: str
    status: str
    stripe_price_id: str | None
    lookup_key: str | None
    product_name: str | None
    cancel_at_period_end: bool
    current_period_end: str | None = Field(description="ISO 8601 UTC")


class StateOut(BaseModel):
    """The user's whole billing state: the payload of `billing.state.updated` too."""

    github_user_id: int
    version: int = Field(
        description="Grows by one each time this document changes (0: never changed)."
    )
    access: AccessOut
    plan: StatePlanOut | None = Field(description="The subscription that grants access, if any.")
    quantity: int | None
    trial_end: str | None = Field(description="ISO 8601 UTC")
    features: list[str] = Field(
        description="The lookup keys of the features the user is entitled to; "
        "empty when access is `blocked` or `none`."
    )
    usage: dict[str, Any] | None = Field(description="Usage against the spend cap (when set).")
