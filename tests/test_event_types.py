"""More event types than Stripe's `types[]` filter takes (20): the poller reads every event,
applies only its own types, and its cursor passes the others so idle polls stay one request."""

from __future__ import annotations

from sqlalchemy import Engine, select

from collab_billing import billing
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.models import BillingSubscription, ProcessedStripeEvent
from collab_billing.mirror.registry import RELEVANT_TYPES, types_filter
from collab_billing.reconcile.poll import Poller
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator

# Types no emulator object emits, as a registry past Stripe's limit would hold.
MANY_TYPES = (
    *RELEVANT_TYPES,
    *(f"example.type_{n}.updated" for n in range(25 - len(RELEVANT_TYPES))),
)


def test_the_filter_is_left_out_past_stripes_limit() -> None:
    assert types_filter(RELEVANT_TYPES[:20]) == RELEVANT_TYPES[:20]
    assert types_filter(MANY_TYPES) is None


def test_a_poll_past_the_filter_limit_applies_its_types_and_passes_the_others(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    reconciler.poller = Poller(
        reconciler.factory, reconciler.gateway, reconciler.applier, types=MANY_TYPES
    )
    factory = reconciler.factory
    with factory() as session, session.begin():
        queries.upsert_user(session, 1, "octocat", None)
    reconciler.drain()
    price = stripe_settings.stripe_price_id or ""
    emulator.complete_checkout(billing.start_checkout(factory, reconciler.gateway, price, 1))
    reconciler.drain()
    # 151 events of a type the service does not read, after everything it applied; the last
    # one more than the poll's overlap (60 s) after the others.
    emulator.control("POST", "clock/advance", {"seconds": 120})
    for n in range(151):
        if n == 150:
            emulator.control("POST", "clock/advance", {"seconds": 120})
        session = emulator.sdk.v1.checkout.sessions.create(
            params={
                "mode": "subscription",
                "line_items": [{"price": price, "quantity": 1}],
                "success_url": "https://example.com/done",
            }
        )
        emulator.sdk.v1.checkout.sessions.expire(session.id)

    report = reconciler.drain()

    assert report.stats.total("applied") == 0
    with factory() as session:
        [row] = session.scalars(select(BillingSubscription)).all()
        types = set(session.scalars(select(ProcessedStripeEvent.stripe_event_type)))
    assert row.stripe_subscription_status == "active"
    assert "checkout.session.expired" not in types
    assert "customer.subscription.created" in types
    # The cursor passed them: the next poll re-reads only the overlap, one page.
    assert reconciler.drain().requests == 1
