"""Inside `serve`, a drain shares the process with webhook deliveries: between its batches it
waits while a delivery is being answered (at most `MAX_GIVE_WAY_SECONDS` a batch), so that a
long catch-up does not answer webhooks seconds late, and it finishes once they are done."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine

from collab_billing.config import Settings
from collab_billing.reconcile import tuning
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from tests.ops_helpers import wait_until
from tests.reconcile_helpers import (
    assert_matches_stripe,
    generate_backlog,
    processed_event_ids,
    relevant_event_ids,
)
from tests.stripe_helpers import Emulator


def test_a_drain_waits_between_batches_while_a_webhook_is_answered(
    emulator: Emulator, stripe_settings: Settings, engine: Engine
) -> None:
    reconciler = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
    generate_backlog(emulator, reconciler.factory, customers=300, per_customer=10)
    drain = threading.Thread(target=reconciler.drain)
    with reconciler.signals.webhook_in_flight():
        drain.start()
        wait_until(lambda: processed_event_ids(reconciler.factory), what="a first batch")
        time.sleep(tuning.MAX_GIVE_WAY_SECONDS / 2)
        during = len(processed_event_ids(reconciler.factory))
        # One batch, then the drain waits for the delivery (without that, the next batches
        # of the 3,000 events follow at once).
        assert 0 < during <= tuning.BATCH_EVENTS
    drain.join(timeout=120)
    assert not drain.is_alive()
    assert set(processed_event_ids(reconciler.factory)) == relevant_event_ids(emulator)
    assert assert_matches_stripe(emulator, reconciler.factory) == 300
