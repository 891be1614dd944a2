"""Time edges of access: when a grace period starts."""

from __future__ import annotations

from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine

from collab_billing.api.schemas import UserOut
from collab_billing.config import Settings
from collab_billing.db.models import BillingInvoice
from collab_billing.db.queries import SubscriptionRow
from collab_billing.state.access import decide_access
from tests.stripe_helpers import Emulator
from tests.test_billing_cycle import emulator_now, running

DAY = timedelta(days=1)
GRACE = timedelta(days=3)


def subscription(status: str, period_start: datetime) -> SubscriptionRow:
    return SubscriptionRow(
        1, "sub_1", status, False, None, None, period_start, period_start + 30 * DAY,
        "price_1", 1, None, None, "pro-monthly", "Pro", 2000, "usd", "month", 1,
    )  # fmt: skip


def test_a_sent_invoice_past_its_due_date_gets_the_grace_from_its_due_date() -> None:
    """`collection_method=send_invoice`: Stripe makes the subscription `past_due` when its
    invoice is not paid by the due date, not when it is finalized (30 days earlier here)."""
    finalized = datetime(2027, 1, 31, 10, tzinfo=UTC)
    due = finalized + 30 * DAY
    invoice = BillingInvoice(
        stripe_invoice_id="in_1", stripe_subscription_id="sub_1", status="open",
        amount_remaining=2000, attempt_count=0, finalized_at=finalized, due_date=due,
    )  # fmt: skip
    now = due + timedelta(hours=1)  # just past due: Stripe moved the subscription past_due
    access = decide_access([subscription("past_due", finalized)], [invoice], now, GRACE)
    assert (access.state, access.until) == ("grace", due + GRACE)


def test_times_are_shown_in_utc_whatever_the_databases_time_zone() -> None:
    """PostgreSQL hands back `timestamptz` values in the connection's `TimeZone`: with a
    server, role or database set to America/New_York, `GET /billing/subscriptions` showed
    `current_period_end` as `2027-02-28T05:00:00-05:00` (and `-04:00` after the DST change)
    while the state document said `2027-02-28T10:00:00Z`."""
    local = datetime(2027, 2, 28, 10, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    user = UserOut(id=1, github_user_id=1, github_login="o", email_address=None, created_at=local)
    assert '"created_at":"2027-02-28T10:00:00Z"' in user.model_dump_json()


def test_a_shorter_grace_setting_applies_to_stored_documents_after_a_restart(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """BILLING_PAST_DUE_GRACE_DAYS lowered from 3 to 1 and the service restarted: the stored
    state documents kept the 3-day grace (`GET /billing/state` and its notifications said
    `grace`, with features, for two more days) while `GET /billing/subscriptions` said
    `blocked`; a lengthened one served `blocked` at the old end."""

    def now() -> datetime:
        return datetime.fromtimestamp(emulator_now(emulator), UTC)

    three_days = stripe_settings.model_copy(update={"billing_past_due_grace_days": 3})
    with contextmanager(running)(three_days, engine, emulator, now) as cycle:
        cycle.past_due(701)  # the renewal declined: in grace for 3 days
        cycle.reconciler.drain()
        stored = cycle.api.get("/billing/state", params={"github_user_id": 701}).json()
        assert stored["access"]["state"] == "grace"
    emulator.advance_to(emulator_now(emulator) + 2 * 86_400)  # 2 days into the grace

    one_day = stripe_settings.model_copy(update={"billing_past_due_grace_days": 1})
    with contextmanager(running)(one_day, engine, emulator, now) as cycle:
        cycle.reconciler.drain()  # the restarted service's first poll
        listed = cycle.view(701)["access"]
        state = cycle.api.get("/billing/state", params={"github_user_id": 701}).json()
        assert listed["state"] == "blocked"
        assert (state["access"], state["features"]) == (listed, [])
