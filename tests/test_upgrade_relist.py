"""The first poll of a release lists again only the types of the formats raised since the
rows' own (`mirror.registry.MIRROR_FORMAT`): from 2 (migrations 0017 and 0018) to 3, the
coupons and discounts, not the prices and subscriptions listed at 2 once more; from 3 to 4,
the features of every live product (Stripe lists them per product only)."""

from __future__ import annotations

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.config import Settings
from collab_billing.db.engine import transaction
from collab_billing.db.models import (
    BillingProduct,
    BillingProductFeature,
    BillingProductFeatureSync,
)
from collab_billing.mirror.registry import MIRROR_FORMAT
from collab_billing.reconcile import ledger
from collab_billing.reconcile.run import Reconciler
from collab_billing.state import outbox
from collab_billing.stripe_gateway import StripeGateway
from tests.stripe_helpers import Emulator
from tests.test_blocked_features import no_grace, second_subscription, state, state_of
from tests.test_discount_reads import _subscribed
from tests.test_entitlements import featured_price, subscribe
from tests.test_reconcile_flow import add_user, reconciler

__all__ = ["no_grace", "reconciler"]  # the fixtures


def test_an_upgrade_from_format_2_lists_coupons_and_discounts_only(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    _subscribed(reconciler, emulator, stripe_settings.stripe_price_id or "")
    reconciler.drain()
    with transaction(reconciler.factory) as session:  # rows of the release of format 2
        ledger.write_state(session, ledger.MIRROR_FORMAT, 2)
    emulator.control("DELETE", "requests")

    reconciler.drain()  # the release's first poll

    routes = emulator.control("GET", "requests")["by_route"]
    assert routes.get("GET /v1/prices", 0) == 0, routes
    assert routes.get("GET /v1/coupons") == 1, routes
    assert routes.get("GET /v1/subscriptions") == 1, routes  # with its discounts
    with reconciler.factory() as session:
        assert ledger.read_int_state(session, ledger.MIRROR_FORMAT) == MIRROR_FORMAT


def as_of_format_3(factory: sessionmaker[Session]) -> None:
    """The rows and documents of the release of format 3: no product's features mirrored,
    every entitlement served (its documents are recomputed so, on read)."""
    with transaction(factory) as session:
        session.execute(delete(BillingProductFeature))
        session.execute(delete(BillingProductFeatureSync))
        ledger.write_state(session, ledger.MIRROR_FORMAT, 3)
    outbox.mark_every_document_stale(factory)


def test_an_upgrade_from_format_3_lists_every_live_products_features_once(
    emulator: Emulator, no_grace: Settings, engine: Engine
) -> None:
    """Else a subscription past due beyond its grace, beside an active one, kept giving its
    features until its customer's next entitlement summary (or a full resync)."""
    reconciler = Reconciler(no_grace, engine, StripeGateway(no_grace))
    add_user(reconciler.factory, 975, "nine-seventy-five")
    reconciler.drain()
    basic, extra = featured_price(emulator, 2, "basic"), featured_price(emulator, 1, "extra")
    reconciler.drain()
    first = subscribe(reconciler, emulator, basic, 975)
    reconciler.drain()
    second_subscription(emulator, reconciler, extra)
    emulator.set_status(first, "past_due")  # blocked at once (no grace)
    reconciler.drain()
    with state_of(no_grace, engine) as api:
        assert state(api, 975) == ("active", ["extra-000"])
        as_of_format_3(reconciler.factory)
        assert state(api, 975) == ("active", ["basic-000", "basic-001", "extra-000"])
        emulator.control("DELETE", "requests")

        reconciler.drain()  # the release's first poll

        routes = emulator.control("GET", "requests")["by_route"]
        assert state(api, 975) == ("active", ["extra-000"])
    live = select(func.count()).select_from(BillingProduct).where(BillingProduct.deleted.is_(False))
    with reconciler.factory() as session:
        assert routes.get("GET /v1/products/{id}/features") == session.scalar(live) >= 2, routes
        assert ledger.read_int_state(session, ledger.MIRROR_FORMAT) == MIRROR_FORMAT
    assert not any(route.startswith(("GET /v1/prices", "GET /v1/coupons")) for route in routes)


def test_the_kinds_listed_again_by_stored_format() -> None:
    from collab_billing.mirror.registry import relisted_since

    everything = {"price", "subscription", "coupon", "discount", "product_feature"}
    assert relisted_since(None) == everything
    assert relisted_since(1) == everything
    assert relisted_since(2) == {"coupon", "discount", "product_feature"}
    assert relisted_since(3) == {"product_feature"}
    assert relisted_since(4) == set()
    assert relisted_since(5) == everything  # rolled back from a newer release
