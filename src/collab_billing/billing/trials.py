"""One trial per customer, ever: `billing_customers.trial_started_at` is claimed by one
conditional UPDATE, so two concurrent requests cannot both get a trial.

The claim is made before the trial's Checkout session is created (no Stripe call inside the
transaction) and given back if creating the session fails. Each new Checkout of the customer
(in the user's turn, `turns.py`) gives a claim back when Stripe shows no subscription of the
customer that ever had a trial: the session that held it was just expired, or Stripe expired
it unpaid, or it was never made (a request killed in between). A customer whose mirrored
subscriptions already had a trial (say, made in the dashboard) gets none either.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.db.models import BillingCustomer, BillingSubscription


def claim_trial(
    factory: sessionmaker[Session], stripe_customer_id: str, now: datetime
) -> datetime | None:
    """Record that the customer starts their trial `now` (the service's clock: in `dev`, the
    emulator's); None if they had one already, or another Checkout holds the claim."""
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
        claimed = session.execute(
            update(BillingCustomer)
            .where(BillingCustomer.id == customer_id, BillingCustomer.trial_started_at.is_(None))
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
