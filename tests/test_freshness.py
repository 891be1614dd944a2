"""Freshness within Stripe's read allowance: the reconciler's cadence and its read budget.

The 30-day runs drive the real loop (`Reconciler.run`) against the emulator with the loop's
clock injected: its waits move the clock instead of sleeping. The emulator counts the reads.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import Engine, insert
from sqlalchemy.orm import Session, sessionmaker

from collab_billing.cli import print_status
from collab_billing.config import Settings
from collab_billing.db.models import StripeReadDay
from collab_billing.reconcile import budget, ledger
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import Event, StripeGateway
from collab_billing.stripe_gateway.throttle import READS
from tests.ops_helpers import WHSEC_NEW, Service, running_service, subscribe, wait_until
from tests.stripe_helpers import Emulator
from tests.test_billing_api import add_user, serve

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


def run_idle(settings: Settings, engine: Engine, emulator: Emulator) -> int:
    """30 idle days of the loop; returns the Stripe reads the emulator counted."""
    emulator.price()  # an account with a catalog, and nothing happening
    READS.take()  # reads of earlier tests in this process are not this run's
    emulator.control("DELETE", "requests")
    simulated = SimulatedTime(time.time(), days=30)
    reconciler = Reconciler(
        settings, engine, StripeGateway(settings), clock=simulated.clock, sleep=simulated.sleep
    )
    reconciler.recheck_seconds = float("inf")  # one process: no other's signal to wait for
    reconciler.run(threading.Event())
    counted = emulator.control("GET", "requests")
    reads: int = sum(n for route, n in counted["by_route"].items() if route.startswith("GET "))
    spent = budget.read_budget(reconciler.factory, simulated.now, 0.8)
    print(f"30 idle days: {reads} reads, {reconciler.polls} polls; "
          f"budget {spent.reads_30d} of {spent.allowed}")  # fmt: skip
    assert spent.reads_30d <= reads  # the budget counted them (less the first day, out of it)
    assert spent.reads_30d >= reads - 400
    return reads


@pytest.mark.timeout(1200)  # ~8,000 polls of the real loop: about a minute on SQLite
def test_thirty_idle_days_stay_under_9000_reads(
    stripe_settings: Settings, engine: Engine, emulator: Emulator, uses_postgres: bool
) -> None:
    """Without webhooks, the dearer month: fast polls after the start backing off to the safety
    interval, stretched once the idle share is spent. With webhooks the month is the same but
    for its first three days (an idle account gets no delivery, and one counts for three days),
    which start at the safety interval: the cadence's tests below pin that.

    SQLite only: the cadence's decisions are the same on both engines, and ~8,000 polls take
    minutes on PostgreSQL; the budget's SQL runs on both below."""
    if uses_postgres:
        pytest.skip("the 30-day cadence runs on SQLite only (minutes of polls on PostgreSQL)")
    settings = production_settings(stripe_settings, webhooks=False)
    assert run_idle(settings, engine, emulator) <= 9_000  # a 5 s poll: 518,400


# -- a missed webhook --------------------------------------------------------------------------


def metric(url: str, name: str) -> float | None:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def test_a_dropped_webhook_is_applied_within_one_safety_interval(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    safety = 3.0
    with running_service(
        stripe_settings,
        engine,
        reconcile_enabled=True,
        reconcile_safety_interval_seconds=safety,
        stripe_webhook_secret=SecretStr(WHSEC_NEW),
    ) as service:
        emulator.control(
            "POST",
            "webhook_endpoints",
            {"url": f"{service.url}/stripe/webhooks", "secret": WHSEC_NEW},
        )
        subscription = subscribe(service, emulator, 1)
        wait_until(lambda: status_of(service, 1) == "active", what="the checkout's webhooks")
        # Webhooks delivered, polls find nothing they missed: the safety net's pace, not fast.
        wait_until(
            lambda: metric(service.url, "collab_billing_poll_interval_seconds") == safety,
            what="the safety-net cadence",
        )
        emulator.control("POST", "webhook_deliveries/drop", {"count": 1})
        changed = time.monotonic()
        emulator.set_status(subscription, "past_due")
        wait_until(lambda: status_of(service, 1) == "past_due", what="the missed change")
        elapsed = time.monotonic() - changed
    dropped = [d for d in emulator.control("GET", "webhook_deliveries")["data"] if d["error"]]
    assert len(dropped) == 1  # the change was never delivered: a poll applied it
    print(f"missed webhook applied after {elapsed:.2f} s (safety interval {safety} s)")
    assert elapsed <= safety + 1.5  # one interval, plus the poll's own time on a busy machine


def status_of(service: Service, github_user_id: int) -> str | None:
    answer = service.api.get("/billing/subscriptions", params={"github_user_id": github_user_id})
    subscriptions = answer.json().get("subscriptions") or [{}]
    return subscriptions[0].get("status")


# -- activity, across processes ----------------------------------------------------------------


def test_a_checkout_created_by_the_api_makes_a_separate_reconciler_poll_fast_then_back_off(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    settings = production_settings(stripe_settings, webhooks=False)
    now = [time.time()]
    # A `reconcile` process: its own signals object; only the database is shared.
    worker = Reconciler(settings, engine, StripeGateway(settings), clock=lambda: now[0])
    assert worker.interval() == 300  # nothing has happened: the safety interval
    for api in serve(settings, engine):
        add_user(api, 5)
        assert api.post("/billing/subscriptions", json={"github_user_id": 5}).status_code == 200
    assert worker.interval() == 5  # the checkout, seen through the database
    now[0] += 600  # ten idle minutes: a tenth of that
    assert worker.interval() == pytest.approx(60, abs=1)
    now[0] += 3600
    assert worker.interval() == 300


def test_events_a_poll_finds_are_activity_for_other_processes_too(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """`reconcile --status` (another process) shows the interval the reconciler goes by: the
    events its poll found made it poll fast, and they were noted only in its memory."""
    settings = production_settings(stripe_settings, webhooks=False)
    now = [time.time()]
    worker = Reconciler(settings, engine, StripeGateway(settings), clock=lambda: now[0])
    worker.drain()  # the first poll: a resync
    now[0] += 3600
    elsewhere = Reconciler(settings, engine, StripeGateway(settings), clock=lambda: now[0])
    assert worker.interval() == elsewhere.interval() == 300  # an hour idle
    emulator.price()  # new events
    assert worker.drain().stats.total("applied") > 0
    assert worker.interval() == elsewhere.interval() == 5


def test_with_healthy_webhooks_activity_does_not_make_polls_fast(
    stripe_settings: Settings, engine: Engine
) -> None:
    settings = production_settings(stripe_settings, webhooks=True)
    worker = Reconciler(settings, engine, StripeGateway(settings))
    worker.signals.webhook_delivered()
    worker.signals.activity()
    assert worker.interval() == 300


def test_webhooks_that_missed_an_event_are_not_trusted_for_a_day(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """A poll that finds an event no delivery applied puts polling off the safety net, and it
    stays off after the next clean polls (it went back at once, so webhooks that drop some
    events were trusted again and again), in a separate process's view too, for a day."""
    settings = production_settings(stripe_settings, webhooks=True)
    now = [time.time()]
    worker = Reconciler(settings, engine, StripeGateway(settings), clock=lambda: now[0])
    worker.drain()  # the first poll: a resync
    worker.signals.webhook_delivered()
    assert worker.interval() == 300
    emulator.price()  # events that no webhook delivers
    now[0] += 60  # older than a delivery takes
    assert worker.drain().missed_by_webhooks > 0
    for _ in range(3):
        assert worker.drain().missed_by_webhooks == 0
        worker.signals.webhook_delivered()
        assert worker.interval() == 5  # fast after activity
    elsewhere = Reconciler(settings, engine, StripeGateway(settings), clock=lambda: now[0])
    assert elsewhere.interval() == 5
    now[0] += 86_400 + 60  # a day without a miss
    worker.signals.webhook_delivered()
    assert worker.interval() == 300


def test_an_event_that_failed_is_retried_when_due_not_at_the_next_safety_poll(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """With webhooks healthy polls are 300 s apart; a parked event's retry, due in 40 s, brings
    the next poll to it (five tries took 25 minutes to report the event failed)."""
    settings = production_settings(stripe_settings, webhooks=True)
    now = [time.time()]
    worker = Reconciler(settings, engine, StripeGateway(settings), clock=lambda: now[0])
    worker.signals.webhook_delivered()
    assert worker.interval() == 300
    emulator.price()
    event = Event.from_dict(emulator.all_events()[0])
    with worker.factory() as session, session.begin():
        ledger.record_pending(session, [event], "price_x", "boom", int(now[0]) + 40)
    assert worker.interval() == pytest.approx(40, abs=1)
    now[0] += 60  # overdue: at the fast interval, not at once and again and again
    assert worker.interval() == 5


# -- the read budget ---------------------------------------------------------------------------


def test_reads_and_transactions_are_counted_and_kept_across_restarts(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    session_factory: sessionmaker[Session],
) -> None:
    READS.take()
    emulator.control("DELETE", "requests")
    for api in serve(stripe_settings, engine):
        add_user(api, 7)
        # A Checkout's reads too (the user's open sessions and subscriptions).
        url = api.post("/billing/subscriptions", json={"github_user_id": 7}).json()
        emulator.complete_checkout(url["checkout_session_url"])
        first = Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))
        first.run(threading.Event(), once=True)  # resync, then a poll: the checkout's events
        counted = emulator.control("GET", "requests")
        reads = sum(n for route, n in counted["by_route"].items() if route.startswith("GET "))
        spent = budget.read_budget(session_factory, time.time(), 0.8)
        assert spent.reads_30d == reads  # every read, as Stripe counted them
        assert spent.transactions_30d == 1  # the first invoice, paid at Checkout, once
        first.run(threading.Event(), once=True)  # the same events again: not counted again
        restarted = budget.read_budget(session_factory, time.time(), 0.8)
        assert restarted.transactions_30d == 1
        assert restarted.reads_30d > spent.reads_30d
        text = httpx.get(f"{api.base_url}/metrics").text
        assert f"collab_billing_stripe_reads_30d {float(restarted.reads_30d)}" in text
        assert "collab_billing_stripe_read_budget 8000.0" in text


def test_reads_that_stripe_failed_and_the_sdk_retried_are_counted(
    stripe_settings: Settings,
    engine: Engine,
    emulator: Emulator,
    session_factory: sessionmaker[Session],
) -> None:
    """Half of the event pages fail with a 500, retried by the SDK: the budget counts every
    request Stripe received (it counted the calls, not their retries)."""
    settings = stripe_settings.model_copy(update={"stripe_max_network_retries": 2})  # default
    reconciler = Reconciler(settings, engine, StripeGateway(settings))
    reconciler.drain()  # the first poll: a resync
    READS.take()
    emulator.control("DELETE", "requests")
    emulator.control(
        "POST", "faults", {"rate": 0.5, "statuses": [500], "path_prefix": "/v1/events", "seed": 3}
    )
    for _ in range(10):
        reconciler.drain()
    emulator.control("DELETE", "faults")
    budget.flush_reads(session_factory, time.time())
    counted = emulator.control("GET", "requests")
    reads = sum(n for route, n in counted["by_route"].items() if route.startswith("GET "))
    assert counted["by_status"].get("500", 0) > 0
    assert budget.read_budget(session_factory, time.time(), 0.8).reads_30d == reads


def test_the_api_records_its_reads_without_a_reconciler(
    stripe_settings: Settings,
    emulator: Emulator,
    engine: Engine,
    session_factory: sessionmaker[Session],
) -> None:
    """`serve` with its reconciler off (a `reconcile` worker runs apart) still counts the reads
    its routes make against the allowance, within seconds, not when some poll flushes them."""
    READS.take()
    emulator.control("DELETE", "requests")
    for api in serve(stripe_settings, engine):  # RECONCILE_ENABLED=false
        add_user(api, 7)
        assert api.post("/billing/subscriptions", json={"github_user_id": 7}).status_code == 200
        counted = emulator.control("GET", "requests")["by_route"]
        reads = sum(n for route, n in counted.items() if route.startswith("GET "))
        assert reads > 0
        # While it runs: a killed process loses only the last few seconds of them.
        wait_until(
            lambda spent=reads: (
                budget.read_budget(session_factory, time.time(), 0.8).reads_30d == spent
            ),
            timeout=budget.RECORD_EVERY_SECONDS + 10,
            what="the reads recorded",
        )


def spend(factory: sessionmaker[Session], reads: int, transactions: int = 0) -> None:
    with factory() as session, session.begin():
        today = budget.day_of(time.time())
        session.execute(
            insert(StripeReadDay),
            [{"day": today - 3, "reads": reads, "transactions": transactions}],
        )


@pytest.mark.parametrize(
    ("reads", "transactions", "expected"),
    [
        (5_000, 0, 300),  # under the idle share (6,000 of 8,000): the safety interval
        (7_000, 0, 432),  # past it: stretched so that idle polls spend 6,000 a month
        (7_000, 30, 300),  # 30 transactions allow 0.8 x 15,000: no stretch
        (8_000, 0, 648),  # all spent: half the pace that spends it, even after activity
    ],
)
def test_the_budget_stretches_the_interval(
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    reads: int,
    transactions: int,
    expected: float,
) -> None:
    settings = production_settings(stripe_settings, webhooks=False)
    spend(session_factory, reads, transactions)
    worker = Reconciler(settings, engine, StripeGateway(settings))
    assert worker.interval() == pytest.approx(expected, abs=1)
    worker.signals.activity()
    assert worker.interval() == (pytest.approx(expected, abs=1) if reads >= 8_000 else 5)


def test_reconcile_status_shows_the_budget_and_the_mode(
    stripe_settings: Settings,
    engine: Engine,
    session_factory: sessionmaker[Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spend(session_factory, 1234, 2)
    print_status(engine, production_settings(stripe_settings, webhooks=False))
    output = capsys.readouterr().out
    assert "stripe reads (30 days):        1234 of 8000 allowed" in output
    assert "(0.8 x max(10,000, 500 x 2 transactions))" in output
    assert "poll mode:                     adaptive, every 300 s now" in output
