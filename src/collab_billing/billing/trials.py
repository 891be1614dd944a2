"""One trial per customer, ever: `billing_customers.trial_started_at` is claimed by one
conditional UPDATE, so two concurrent requests cannot both get a trial.

The claim is made before the trial's Checkout session is created (no Stripe call inside the
transaction) and given back if creating the session fails, or when a newer Checkout expires
that session. A session left unpaid expires on Stripe within 24 hours: a claim older than
that, with no subscription of the customer ever trialing, is free again. A customer whose
mirrored subscriptions already had a trial (say, made in the dashboard) gets none either.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.models import BillingCustomer, BillingSubscription

# Stripe expires an unpaid Checkout session 24 hours after it is made (by default, at most).
UNPAID_CHECKOUT_LIFETIME = timedelta(hours=25)


def claim_trial(
    factory: sessionmaker[Session], stripe_customer_id: str, now: datetime
) -> datetime | None:
    """Record that the customer starts their trial `now` (the service's clock, which Stripe's
    expiry of sessions follows: in `dev`, the emulator's); None if they had one already."""
    with factory() as session, session.begin():
        customer_id = session.scalar(
            select(BillingCustomer.id).where(
                BillingCustomer.stripe_customer_id == stripe_customer_id
            )
        )
        had_trial = session.scalar(
            select(BillingSubscription.id)
            .where(
                BillingSubscription.billing_customer_id == customer_id,
                BillingSubscription.stripe_trial_end.is_not(None),
            )
            .limit(1)
        )
        if customer_id is None or had_trial is not None:
            return None
        unclaimed = or_(
            BillingCustomer.trial_started_at.is_(None),
            BillingCustomer.trial_started_at < now - UNPAID_CHECKOUT_LIFETIME,
        )
        claimed = session.execute(
            update(BillingCustomer)
            .where(BillingCustomer.id == customer_id, unclaimed)
            .values(trial_started_at=now)
        )
        return now if claimed.rowcount == 1 else None  # type: ignore[attr-defined]


def release_trial(factory: sessionmaker[Session], stripe_customer_id: str) -> None:
    """Give back a claim whose Checkout session could not be created, or was expired unpaid."""
    with factory() as session, session.begin():
        session.execute(
            update(BillingCustomer)
            .where(BillingCustomer.stripe_customer_id == stripe_customer_id)
            .values(trial_started_at=None)
        )
