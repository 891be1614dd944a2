"""Request and response models of the usage routes (`api/usage.py`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    WithJsonSchema,
)

from collab_billing.api.schemas import GithubUserId, StrictModel, UtcDatetime, _number_not_text

# No control characters: no part of a name or a key, and PostgreSQL cannot store NUL in text.
_PRINTABLE = r"^[^\u0000-\u001f\u007f]+$"
MeterName = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=100, pattern=_PRINTABLE),
    Field(description="The meter's `event_name`", examples=["llm_tokens"]),
]
# A value with a fraction keeps within what a double holds, as the JSON of most clients does:
# 15 significant digits. Request bodies keep such numbers exactly as written (`strict_json`),
# so one with more is refused rather than billed rounded. Integers are exact up to 10^18.
DOUBLE_DIGITS = 15


def _exact_number(value: object) -> object:
    number = Decimal(repr(value)) if isinstance(value, float) else value
    if not isinstance(number, Decimal) or not number.is_finite():
        return value
    fraction = number != number.to_integral_value()
    if fraction and len(number.normalize().as_tuple().digits) > DOUBLE_DIGITS:
        raise ValueError(f"has more than {DOUBLE_DIGITS} significant digits")
    return value


UsageValue = Annotated[
    Decimal,
    Field(gt=0, lt=Decimal(10) ** 18, decimal_places=12, allow_inf_nan=False, examples=[1200]),
    BeforeValidator(_exact_number),
    BeforeValidator(_number_not_text),
    # A JSON number only (pydantic would document a decimal as a number or a string).
    WithJsonSchema({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e18}),
]
IdempotencyKey = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=255, pattern=_PRINTABLE),
    Field(examples=["request-7f3a"]),
]
UnixSeconds = Annotated[
    int, Field(ge=0, le=2**40, examples=[1764950000]), BeforeValidator(_number_not_text)
]
Cents = Annotated[int, Field(ge=0, le=2**53 - 1), BeforeValidator(_number_not_text)]


class UsageRecordIn(StrictModel):
    github_user_id: GithubUserId
    meter: MeterName
    value: UsageValue = Field(
        description="A positive number: an integer below 10^18, or up to 12 decimal places "
        "and 15 significant digits"
    )
    timestamp: UnixSeconds | None = Field(
        default=None,
        description="When the usage happened (Unix seconds): at most 34 days past and 5 "
        "minutes ahead. Left out: now.",
    )
    idempotency_key: IdempotencyKey = Field(
        description="Unique per user: a record with a key already seen is a duplicate"
    )


class UsageBatchIn(StrictModel):
    events: list[UsageRecordIn] = Field(min_length=1, max_length=1000)


def _usage_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "record"


UsageIn = Annotated[
    Annotated[UsageBatchIn, Tag("batch")] | Annotated[UsageRecordIn, Tag("record")],
    Discriminator(_usage_kind),
]


class UsageRefused(BaseModel):
    """422: invalid input (FastAPI's list of errors), or an unknown user or meter (a message)."""

    detail: str | list[dict[str, Any]] = Field(
        examples=["unknown meter 'gpu_seconds': no active Stripe billing meter has this event_name"]
    )


class UsageAccepted(BaseModel):
    accepted: int = Field(description="Records stored (new)")
    duplicates: int = Field(description="Records whose (user, idempotency_key) was already seen")
    over_spend_cap: bool = Field(description="A user of these records is past their spend cap")


class MeterUsageOut(BaseModel):
    meter: str
    stripe_meter_id: str
    aggregation: str
    total: str = Field(description="This period's total, as a decimal string", examples=["1250"])
    stripe_price_id: str | None = Field(
        description="The price the user's subscription bills this meter at (null: none bills it)"
    )
    currency: str | None
    estimated_cost_cents: int | None = Field(
        description="0 when no subscription bills the meter; null for a tiered price mirrored "
        "without its tiers"
    )


class UsageOut(BaseModel):
    github_user_id: int
    period_start: UtcDatetime
    period_end: UtcDatetime
    period_source: Literal["subscription", "calendar_month"]
    meters: list[MeterUsageOut]
    estimated_cost_cents: int
    max_monthly_spend_cents: int | None
    over_spend_cap: bool


class PreferencesIn(StrictModel):
    github_user_id: GithubUserId
    max_monthly_spend_cents: Cents | None = Field(
        description="The monthly spend cap in the smallest unit of the currency the user is "
        "billed in, as Stripe counts amounts (cents for USD, yen for JPY, fils for KWD; not "
        "converted if that currency changes); null: no cap"
    )


class PreferencesOut(BaseModel):
    github_user_id: int
    max_monthly_spend_cents: int | None
