"""The usage routes: ingest (`POST /billing/usage`), this period's usage and cost, and the
spend cap (`/billing/preferences`). Database only: the sender talks to Stripe."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from collab_billing.api.deps import AdminOnly, ClockDep, SessionFactoryDep
from collab_billing.api.responses import ADMIN_ERRORS, Responses, model_response
from collab_billing.api.schemas import ErrorResponse, GithubUserIdQuery
from collab_billing.api.strict_json import StrictJSONRoute
from collab_billing.api.usage_schemas import (
    MeterUsageOut,
    PreferencesIn,
    PreferencesOut,
    UsageAccepted,
    UsageBatchIn,
    UsageIn,
    UsageOut,
    UsageRecordIn,
    UsageRefused,
)
from collab_billing.billing import find_user, spend, usage
from collab_billing.db.engine import read_only

PATH = "/billing/usage"
# A batch of 1,000 records is about 150 kB of JSON.
MAX_USAGE_BODY_BYTES = 512 * 1024

router = APIRouter(
    prefix="/billing",
    tags=["usage"],
    dependencies=AdminOnly,
    responses=ADMIN_ERRORS,
    route_class=StrictJSONRoute,
)

UNPROCESSABLE: Responses = {
    422: {"model": UsageRefused, "description": "Invalid, or unknown user or meter"}
}
NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "Unknown user"}}


def _check_window(record: UsageRecordIn, now: int) -> int:
    timestamp = now if record.timestamp is None else record.timestamp
    if timestamp < now - usage.PAST_WINDOW_SECONDS:
        raise usage.Unprocessable(
            f"timestamp {timestamp} of {record.idempotency_key!r} is more than 34 days ago: "
            "Stripe refuses meter events over 35 days old, and it would be sent later"
        )
    if timestamp > now + usage.FUTURE_WINDOW_SECONDS:
        raise usage.Unprocessable(
            f"timestamp {timestamp} of {record.idempotency_key!r} is more than 5 minutes ahead"
        )
    return timestamp


@router.post(
    "/usage",
    status_code=202,
    response_model=UsageAccepted,
    responses=UNPROCESSABLE,
    summary="Record usage (one record or up to 1,000); answered once stored",
)
def record_usage(body: UsageIn, factory: SessionFactoryDep, clock: ClockDep) -> UsageAccepted:
    records = body.events if isinstance(body, UsageBatchIn) else [body]
    # The service's clock, as `GET /billing/usage` reads periods by (dev: the emulator's).
    now = int(clock().timestamp())
    result = usage.ingest(
        factory,
        [
            usage.UsageRecord(
                github_user_id=r.github_user_id,
                meter=r.meter,
                value=r.value,
                timestamp=_check_window(r, now),
                idempotency_key=r.idempotency_key,
            )
            for r in records
        ],
    )
    return UsageAccepted(
        accepted=result.accepted,
        duplicates=result.duplicates,
        over_spend_cap=result.over_spend_cap,
    )


@router.get(
    "/usage",
    response_model=UsageOut,
    responses=NOT_FOUND,
    summary="This period's usage per meter, its estimated cost and the spend cap",
)
def get_usage(
    github_user_id: Annotated[GithubUserIdQuery, Query()],
    factory: SessionFactoryDep,
    clock: ClockDep,
) -> Response:
    user = find_user(factory, github_user_id)
    with read_only(factory) as session:
        found = spend.user_spend(session, user.id, clock())
    usage_out = UsageOut(
        github_user_id=github_user_id,
        period_start=found.period.start,
        period_end=found.period.end,
        period_source=found.period.source,
        meters=[
            MeterUsageOut(**(vars(m) | {"total": format(m.total.normalize(), "f")}))
            for m in found.meters
        ],
        estimated_cost_cents=found.estimated_cost_cents,
        max_monthly_spend_cents=found.max_monthly_spend_cents,
        over_spend_cap=found.over_spend_cap,
    )
    return model_response(usage_out)


@router.put(
    "/preferences",
    response_model=PreferencesOut,
    responses=NOT_FOUND,
    summary="Set the user's monthly spend cap (null: none)",
)
def put_preferences(body: PreferencesIn, factory: SessionFactoryDep) -> PreferencesOut:
    user = find_user(factory, body.github_user_id)
    usage.set_cap(factory, user.id, body.max_monthly_spend_cents)
    return PreferencesOut(
        github_user_id=body.github_user_id, max_monthly_spend_cents=body.max_monthly_spend_cents
    )


@router.get(
    "/preferences",
    response_model=PreferencesOut,
    responses=NOT_FOUND,
    summary="The user's billing preferences",
)
def get_preferences(
    github_user_id: Annotated[GithubUserIdQuery, Query()], factory: SessionFactoryDep
) -> PreferencesOut:
    user = find_user(factory, github_user_id)
    with read_only(factory) as session:
        cap = spend.get_cap(session, user.id)
    return PreferencesOut(github_user_id=github_user_id, max_monthly_spend_cents=cap)
