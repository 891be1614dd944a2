"""Freshness within Stripe's read allowance: the reconciler's cadence and its read budget.

The 30-day runs drive the real loop (`Reconciler.run`) against the emulator with the loop's
clock injected: its waits move the clock instead of sleeping. The emulator counts the reads.
"""

from __future__ import annotations

import threading

from pydantic import SecretStr
from sqlalchemy import Engine

from collab_billing.config import Settings
from collab_billing.reconcile import budget
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import StripeGateway
from collab_billing.stripe_gateway.client import READS
from tests.stripe_helpers import Emulator

DAY = 86_400
WHSEC = "whsec_freshness_tests"


class SimulatedTime:
    """The loop's clock and sleep: a wait moves the clock; the run stops after `days`."""

    def __init__(self, start: float, days: float) -> None:
        self.now = start
        self.end = start + days * DAY

    def clock(self) -> float:
        return self.now

    def sleep(self, stop: threading.Event, seconds: float) -> None:
        self.now += seconds
        if self.now >= self.end:
            stop.set()


def production_settings(stripe_settings: Settings, webhooks: bool) -> Settings:
    """The defaults a deployment runs with (the tests' fixtures poll faster)."""
    defaults = Settings.model_fields
    return stripe_settings.model_copy(
        update={
            "reconcile_interval_seconds": defaults["reconcile_interval_seconds"].default,
            "reconcile_safety_interval_seconds": defaults[
                "reconcile_safety_interval_seconds"
            ].default,
            "stripe_webhook_secret": SecretStr(WHSEC) if webhooks else None,
        }
    )


def run_idle(settings: Settings, engine: Engine, emulator: Emulator, healthy: bool) -> int:
    """30 idle days of the loop; returns the Stripe reads the emulator counted."""
    import time

    emulator.price()  # an account with a catalog, and nothing happening
    READS.take()  # reads of earlier tests in this process are not this run's
    emulator.control("DELETE", "requests")
    simulated = SimulatedTime(time.time(), days=30)
    reconciler = Reconciler(
        settings, engine, StripeGateway(settings), clock=simulated.clock, sleep=simulated.sleep
    )
    reconciler.recheck_seconds = float("inf")  # one process: no other's signal to wait for
    if healthy:
        reconciler.signals.webhook_delivered()  # the last delivery, as the route notes it
    reconciler.run(threading.Event())
    counted = emulator.control("GET", "requests")
    reads: int = sum(n for route, n in counted["by_route"].items() if route.startswith("GET "))
    spent = budget.read_budget(reconciler.factory, simulated.now, 0.8)
    print(f"30 idle days, webhooks {'healthy' if healthy else 'off'}: {reads} reads, "
          f"{reconciler.polls} polls; budget {spent.reads_30d} of {spent.allowed}")  # fmt: skip
    assert spent.reads_30d <= reads  # the budget counted them (less the first day, out of it)
    assert spent.reads_30d >= reads - 400
    return reads


def test_thirty_idle_days_with_healthy_webhooks_stay_under_9000_reads(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    settings = production_settings(stripe_settings, webhooks=True)
    assert run_idle(settings, engine, emulator, healthy=True) <= 9_000  # a 5 s poll: 518,400


def test_thirty_idle_days_without_webhooks_stay_under_10000_reads(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    settings = production_settings(stripe_settings, webhooks=False)
    assert run_idle(settings, engine, emulator, healthy=False) <= 10_000
