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
    model_validator,
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


def _decimal_digits(value: object) -> object:
    # Query strings are text: "12345" is the id 12345, but not "12_345", "+12345" or "12345.0",
    # which Python's and pydantic's lax parsing of integers would take.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in digits only")
    return value


GithubUserIdQuery = Annotated[
    int,
    Field(ge=1, le=MAX_JSON_SAFE_INTEGER, examples=[12345]),
    BeforeValidator(_decimal_digits),
]
PageSize = Annotated[
    int, Field(ge=1, le=100, description="At most this many"), BeforeValidator(_decimal_digits)
]
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
    """Every stored time is UTC, and shown in UTC: SQLite hands back naive datetimes, and
    PostgreSQL aware ones in the connection's `TimeZone` (the server's default, or the role's or
    database's), which would show another offset than the state document's `Z`."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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


PriceName = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=255, pattern=r"^[!-~]+$"),
    Field(description="A lookup key or a Stripe price id", examples=["pro-monthly"]),
]
Quantity = Annotated[
    int,
    Field(ge=1, le=10_000, description="Seats", examples=[1]),
    BeforeValidator(_number_not_text),
]


class CheckoutIn(StrictModel):
    github_user_id: GithubUserId
    price: PriceName | None = Field(
        default=None, description="One of `GET /billing/prices`; omitted: STRIPE_PRICE_ID."
    )
    quantity: Quantity = 1
    trial: bool = Field(
        default=False,
        strict=True,
        description="Ask for a trial of BILLING_TRIAL_DAYS (one per customer, ever).",
    )


class CheckoutOut(BaseModel):
    checkout_session_url: str
    stripe_price_id: str
    lookup_key: str | None
    quantity: int | None = Field(description="The seats bought (null: a metered plan).")
    usage_price_ids: list[str] = Field(
        description="The metered prices added beside the plan (`BILLING_USAGE_PRICES`)."
    )
    trial: bool = Field(description="Whether this Checkout starts a trial.")
    trial_days: int | None
    trial_refused: str | None = Field(
        description="Why a requested trial is not part of this Checkout (null: none refused)."
    )


Intent = Literal[
    "cancel",
    "manage",
    "update_payment_method",
    "change_plan",
    "stop_cancellation",
    "end_trial",
    "pay_invoice",
]


class ManageIn(StrictModel):
    github_user_id: GithubUserId
    intent: Intent = Field(
        description=(
            "`cancel`, `manage` (the portal's home), `update_payment_method`, `change_plan` "
            "(with `price`, `quantity?`): a portal URL. `stop_cancellation`, `end_trial`: done "
            "through Stripe's API; the answer carries the subscription. `pay_invoice`: "
            "`{hosted_invoice_url}` of the overdue invoice. 409 if it does not apply."
        )
    )
    subscription_id: OurSubscriptionId | StripeSubscriptionId | None = Field(
        default=None,
        description="Our id or Stripe's `sub_...`; omitted: the user's only one that fits.",
    )
    price: PriceName | None = Field(default=None, description="`change_plan`: the new plan.")
    quantity: Quantity | None = Field(
        default=None, description="`change_plan`: the seats (omitted: unchanged)."
    )


class PlanOut(BaseModel):
    """The subscribed price, as the mirrored catalog knows it."""

    stripe_price_id: str
    lookup_key: str | None
    product_name: str | None
    unit_amount: int | None
    currency: str | None
    interval: str | None
    interval_count: int | None


CheckoutSessionId = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^cs_[A-Za-z0-9_]{1,250}$"),
    Field(examples=["cs_test_a1Example"]),
]


def _sync_schema(schema: dict[str, Any]) -> None:
    """Documented as it is validated: either field, not null; at least one of them."""
    for name in ("github_user_id", "checkout_session_id"):
        field = schema["properties"][name]
        variants = [v for v in field.pop("anyOf", []) if v.get("type") != "null"]
        field.pop("default", None)
        if variants:
            field.update(variants[0])
    schema["anyOf"] = [{"required": ["github_user_id"]}, {"required": ["checkout_session_id"]}]


class SyncIn(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_sync_schema)

    github_user_id: GithubUserId | None = None
    checkout_session_id: CheckoutSessionId | None = Field(
        default=None,
        description="The `session_id` the success URL carries; with `github_user_id` too, "
        "the session must be that user's.",
    )

    @model_validator(mode="after")
    def _one_given(self) -> SyncIn:
        if self.github_user_id is None and self.checkout_session_id is None:
            raise ValueError("give github_user_id or checkout_session_id")
        return self


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
    plan: PlanOut | None
    quantity: int | None
    trial_end: UtcDatetime | None
    kind: Literal["trial", "paid"] = Field(
        description="`trial` while trialing (or a trial that ended unpaid); else `paid`."
    )
    cancellation_reason: str | None = Field(
        description="Stripe's `cancellation_details.reason` (e.g. `cancellation_requested`)."
    )


class ManageOut(BaseModel):
    billing_portal_session_url: str | None = Field(
        description="The portal page to send the user to; null when the change is done."
    )
    subscription: SubscriptionOut | None = Field(
        default=None, description="The changed subscription (`stop_cancellation`, `end_trial`)."
    )


class AccessOut(BaseModel):
    state: Literal["active", "grace", "blocked", "none"] = Field(
        description=(
            "`active` (active or trialing), `grace` (past due, within "
            "BILLING_PAST_DUE_GRACE_DAYS of the first failed payment), `blocked` (past due "
            "beyond grace, unpaid, or canceled for a failed payment with an invoice open), "
            "`none` (no subscription). Derived from the mirrored rows (`state.access`), "
            "judged at the service's clock: a grace that has ended is `blocked`."
        )
    )
    until: UtcDatetime | None = Field(description="When grace ends (`grace` only).")


class OverdueInvoiceOut(BaseModel):
    id: str = Field(description="Stripe's invoice id, `in_...`.")
    amount_remaining: int
    currency: str
    hosted_invoice_url: str | None


class SubscriptionsOut(BaseModel):
    github_user_id: int
    has_active_subscription: bool = Field(description="Access is `active` or `grace`.")
    subscriptions: list[SubscriptionOut]
    access: AccessOut
    overdue_invoices: list[OverdueInvoiceOut]


class PayInvoiceOut(BaseModel):
    hosted_invoice_url: str


class InvoiceOut(BaseModel):
    id: str = Field(description="Stripe's invoice id, `in_...`.")
    subscription_id: str | None = Field(description="Stripe's subscription id, if any.")
    status: str
    number: str | None
    billing_reason: str | None
    currency: str
    amount_due: int
    amount_paid: int
    amount_remaining: int
    hosted_invoice_url: str | None
    attempt_count: int
    next_payment_attempt: UtcDatetime | None
    created: UtcDatetime
    finalized_at: UtcDatetime | None
    paid_at: UtcDatetime | None
    due_date: UtcDatetime | None
    period_start: UtcDatetime | None = Field(
        description="Stripe's invoice period: when its items were added (a renewal's: the "
        "period that ended, whose usage it bills); a first invoice's starts and ends at once"
    )
    period_end: UtcDatetime | None


class InvoicesOut(BaseModel):
    github_user_id: int
    invoices: list[InvoiceOut]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


StripeInvoiceId = Annotated[
    str,
    StringConstraints(strict=True, pattern=r"^in_[A-Za-z0-9_]{1,250}$"),
    Field(examples=["in_1QExample"]),
]


class TierOut(BaseModel):
    """One of a tiered price's tiers, as Stripe has it (amounts in the currency's smallest
    unit, as decimal text)."""

    up_to: int | None = Field(description="The last unit of the tier; null: no end.")
    unit_amount_decimal: str | None
    flat_amount_decimal: str | None


class TransformQuantityOut(BaseModel):
    """A package price: the quantity is divided by `divide_by` and rounded `up` or `down`."""

    divide_by: int
    round: str


class PriceOut(BaseModel):
    """A price on sale, with what a pricing page needs to show its amount: `unit_amount`
    (null for a price of a fraction of the smallest unit or a tiered one), else
    `unit_amount_decimal` or `tiers`; `transform_quantity` for a package price."""

    lookup_key: str
    stripe_price_id: str
    product_name: str | None
    unit_amount: int | None
    unit_amount_decimal: str | None
    billing_scheme: str
    tiers_mode: str | None
    tiers: list[TierOut] | None
    transform_quantity: TransformQuantityOut | None
    currency: str
    interval: str
    interval_count: int
    usage_type: str


class PricesOut(BaseModel):
    prices: list[PriceOut]


class StatePlanOut(PlanOut):
    """The plan (`GET /billing/subscriptions`' `plan`) and the subscription that has it."""

    stripe_subscription_id: str
    status: str
    cancel_at_period_end: bool
    cancel_at: UtcDatetime | None = Field(
        description="When the subscription is set to end: a date chosen (`cancel_at`) or, "
        "with `cancel_at_period_end`, the period's end; null: not set to end."
    )
    current_period_end: UtcDatetime | None


class StateUsageOut(BaseModel):
    max_monthly_spend_cents: int | None = Field(description="The spend cap; null: none.")
    over_spend_cap: bool = Field(
        description="This period's estimated cost is past the cap (`GET /billing/usage` has "
        "the totals: they are not in the document, whose every change is a notification)."
    )


class StateOut(BaseModel):
    """The user's whole billing state: the payload of `billing.state.updated` too."""

    github_user_id: int
    version: int = Field(
        description="Grows by one each time this document changes (0: never changed)."
    )
    access: AccessOut
    plan: StatePlanOut | None = Field(description="The subscription that grants access, if any.")
    quantity: int | None = Field(description="The plan's seats.")
    trial_end: UtcDatetime | None
    features: list[str] = Field(
        description="The lookup keys of the features the user is entitled to; "
        "empty when access is `blocked` or `none`."
    )
    usage: StateUsageOut
