"""The first poll of a release lists again only the types of the formats raised since the
rows' own (`mirror.registry.MIRROR_FORMAT`): from 2 (migrations 0017 and 0018) to 3, the
coupons and discounts, not the prices and subscriptions listed at 2 once more."""

from __future__ import annotations

from collab_billing.config import Settings
from collab_billing.db.engine import transaction
from collab_billing.reconcile import ledger
from collab_billing.reconcile.run import Reconciler
from tests.stripe_helpers import Emulator
from tests.test_discount_reads import _subscribed
from tests.test_reconcile_flow import reconciler

__all__ = ["reconciler"]  # the fixture


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
        assert ledger.read_int_state(session, ledger.MIRROR_FORMAT) == 3


def test_the_kinds_listed_again_by_stored_format() -> None:
    from collab_billing.mirror.registry import relisted_since

    everything = {"price", "subscription", "coupon", "discount"}
    assert relisted_since(None) == everything
    assert relisted_since(1) == everything
    assert relisted_since(2) == {"coupon", "discount"}
    assert relisted_since(3) == set()
    assert relisted_since(4) == everything  # rolled back from a newer release
