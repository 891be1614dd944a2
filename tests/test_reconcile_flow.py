"""The reconciler against the emulator: the user story, resync, idle cost, unmatched customers."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from collab_billing import billing
from collab_billing.config import Settings
from collab_billing.db import queries
from collab_billing.db.models import (
    BillingCustomer,
    BillingSubscription,
    ProcessedStripeEvent,
    User,
)
from collab_billing.reconcile import ledger
from collab_billing.reconcile.run import Reconciler
from collab_billing.stripe_gateway import Event, StripeGateway
from tests.emulator.conftest import CARD
from tests.reconcile_helpers import (
    assert_matches_stripe,
    generate_backlog,
    processed_event_ids,
    relevant_event_ids,
)
from tests.stripe_helpers import Emulator


@pytest.fixture
def reconciler(stripe_settings: Settings, engine: Engine) -> Reconciler:
    return Reconciler(stripe_settings, engine, StripeGateway(stripe_settings))


def add_user(factory: sessionmaker[Session], github_user_id: int, login: str) -> None:
    with factory() as session, session.begin():
        queries.upsert_user(session, github_user_id, login, f"{login}@example.com")


def subscriptions(factory: sessionmaker[Session]) -> list[BillingSubscription]:
    with factory() as session:
        return list(session.scalars(select(BillingSubscription)))


def checkout(reconciler: Reconciler, price: str, github_user_id: int) -> str:
    wanted = billing.CheckoutRequest(github_user_id, price)
    return billing.start_checkout(reconciler.factory, reconciler.gateway, wanted).url


def subscribe_new_user(
    reconciler: Reconciler, emulator: Emulator, price: str, github_user_id: int
) -> None:
    """A user who pays: synced once, checkout completed in Stripe, events applied."""
    add_user(reconciler.factory, github_user_id, f"user{github_user_id}")
    reconciler.drain()
    emulator.complete_checkout(checkout(reconciler, price, github_user_id))
    reconciler.drain()


def burst_after_a_first_poll(
    reconciler: Reconciler, emulator: Emulator, customers: int, seed: int, same_second_share: float
) -> None:
    """A first poll that saw an empty account, then 10 events for each of `customers` new
    customers (each of a user of ours) in 5 seconds."""
    with reconciler.factory() as session, session.begin():
        for n in range(1, customers + 1):
            session.add(User(github_user_id=n, github_login=f"user{n}"))
    reconciler.drain()  # the first poll: a resync of an empty account
    emulator.control("POST", "clock/advance", {"seconds": 60})
    emulator.control(
        "POST",
        "generate",
        {"customers": customers, "events_per_customer": 10, "first_github_user_id": 1,
         "seed": seed, "span_seconds": 5, "same_second_share": same_second_share},
    )  # fmt: skip


def test_checkout_completion_then_cancel_flow(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    factory = reconciler.factory
    add_user(factory, 12345, "octocat")
    reconciler.drain()  # first drain: never synced -> resync, then poll
    url = checkout(reconciler, stripe_settings.stripe_price_id or "", 12345)
    emulator.complete_checkout(url)

    report = reconciler.drain()
    assert report.stats.total("applied") >= 2
    [row] = subscriptions(factory)
    assert row.stripe_subscription_status == "active"
    assert row.stripe_current_period_end is not None
    assert not row.stripe_cancel_at_period_end

    portal = billing.open_cancel_portal(factory, reconciler.gateway, 12345, None)
    emulator.confirm_portal(portal)
    reconciler.drain()
    [row] = subscriptions(factory)
    assert row.stripe_cancel_at_period_end
    assert row.stripe_cancel_at is not None

    emulator.sdk.v1.subscriptions.cancel(row.stripe_subscription_id)
    reconciler.drain()
    [row] = subscriptions(factory)
    assert row.stripe_subscription_status == "canceled"


def test_events_are_recorded_once_and_idle_polls_cost_one_request(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    subscribe_new_user(reconciler, emulator, stripe_settings.stripe_price_id or "", 1)
    reconciler.drain()
    with reconciler.factory() as session:
        ids = list(session.scalars(select(ProcessedStripeEvent.stripe_event_id)))
    assert len(ids) == len(set(ids)) > 0
    idle = reconciler.drain()
    assert idle.requests == 1
    assert idle.stats.total("applied") == 0


def test_a_dense_burst_is_read_about_once(reconciler: Reconciler, emulator: Emulator) -> None:
    """Right after a first poll that saw an empty account, 5,000 events in 5 seconds (most
    seconds hold ten pages): each page is read about once. A window that finds more than it
    was sized for is split and read on from its last event, not read again."""
    burst_after_a_first_poll(reconciler, emulator, customers=500, seed=7, same_second_share=0.3)
    emulator.control("DELETE", "requests")
    report = reconciler.drain()
    pages = emulator.control("GET", "requests")["by_route"]["GET /v1/events"]
    assert report.events_seen >= 5000
    # The windows' last pages are partial: a quarter more than full pages at most.
    assert pages <= 1.25 * report.events_seen / 100, pages


def test_a_poll_over_events_applied_already_reads_nothing_but_events(
    reconciler: Reconciler, emulator: Emulator
) -> None:
    """Webhooks apply events before polls see them: events applied already cost the poll no
    Stripe read, not even same-second ties, which were read once when first applied."""
    burst_after_a_first_poll(reconciler, emulator, customers=50, seed=3, same_second_share=0.5)
    delivered = [Event.from_dict(event) for event in reversed(emulator.all_events())]
    first = reconciler.applier.apply(delivered)  # as the webhook route applies them
    assert first.total("applied") > 0 and first.stripe_reads > 0  # ties re-read
    emulator.control("DELETE", "requests")
    again = reconciler.drain()
    assert again.stats.total("duplicate") >= 500
    assert again.stats.total("applied") == 0
    assert emulator.control("GET", "requests")["by_route"].keys() == {"GET /v1/events"}


def test_an_idle_poll_after_a_dense_burst_costs_one_request(
    reconciler: Reconciler, emulator: Emulator
) -> None:
    """The minute below the cursor holds 3,000 events, its newest second hundreds: the idle
    polls after it read one page each, not the burst again (an idle service polls ~8,000
    times a month within a read allowance of 10,000)."""
    burst_after_a_first_poll(reconciler, emulator, customers=300, seed=5, same_second_share=0.3)
    reconciler.drain()
    emulator.control("DELETE", "requests")
    for _ in range(3):
        idle = reconciler.drain()
        assert idle.requests == 1 and idle.stats.total("applied") == 0
    assert emulator.control("GET", "requests")["by_route"] == {"GET /v1/events": 3}


def test_a_poll_stopped_inside_a_second_applies_the_rest_of_it_next_time(
    reconciler: Reconciler, emulator: Emulator
) -> None:
    """A second of 2,000 events is applied in several transactions. Webhooks delivered its
    newest 200 events, and a poll stopped after its first transaction that applied anything
    (the leadership lost): the next poll still applies the rest of that second, though its
    newest page, at the cursor, holds nothing new."""
    with reconciler.factory() as session, session.begin():
        for n in range(1, 201):
            session.add(User(github_user_id=n, github_login=f"user{n}"))
    reconciler.drain()
    emulator.control("POST", "clock/advance", {"seconds": 60})
    emulator.control(
        "POST",
        "generate",
        {"customers": 200, "events_per_customer": 10, "first_github_user_id": 1,
         "seed": 11, "span_seconds": 1, "same_second_share": 0.0},
    )  # fmt: skip
    newest = emulator.all_events()[:200]
    assert len({event["created"] for event in newest}) == 1
    reconciler.applier.apply([Event.from_dict(event) for event in reversed(newest)])
    delivered = len(processed_event_ids(reconciler.factory))
    stopped = reconciler.drain(
        leading=lambda: len(processed_event_ids(reconciler.factory)) == delivered
    )
    assert stopped.interrupted and 0 < stopped.stats.total("applied") < 1800
    reconciler.drain()
    assert set(processed_event_ids(reconciler.factory)) >= relevant_event_ids(emulator)
    assert_matches_stripe(emulator, reconciler.factory)


def test_a_backlog_read_many_windows_at_once_from_a_far_stripe_converges(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    """A week of events above a day without any, from a Stripe 100 ms away at the live rate:
    a dozen windows are read at once, those cut by the empty day's density overflow and are
    split while the windows before them are still being read, and every event is applied
    once, the database ending as Stripe, at about one request per 100 events."""
    settings = stripe_settings.model_copy(update={"stripe_requests_per_second": 100.0})
    reconciler = Reconciler(settings, engine, StripeGateway(settings))
    generated = generate_backlog(emulator, reconciler.factory, customers=1500, per_customer=8)
    emulator.control("POST", "faults", {"latency_ms": 100, "path_prefix": "/v1/events"})
    emulator.control("DELETE", "requests")
    report = reconciler.drain()
    emulator.control("DELETE", "faults")
    requests = emulator.control("GET", "requests")
    assert report.concurrency >= 8 and requests["max_in_flight"] <= 16
    processed = processed_event_ids(reconciler.factory)
    assert len(processed) == len(set(processed))
    assert set(processed) == relevant_event_ids(emulator)
    assert assert_matches_stripe(emulator, reconciler.factory) == 1500
    # The windows' last pages are partial: a quarter more than full pages at most.
    assert requests["by_route"]["GET /v1/events"] <= 1.25 * generated["events"] / 100


def test_an_api_base_ending_in_a_slash_reaches_the_same_stripe(
    stripe_settings: Settings, engine: Engine, emulator: Emulator
) -> None:
    settings = stripe_settings.model_copy(
        update={"stripe_api_base": stripe_settings.stripe_api_base + "/"}
    )
    reconciler = Reconciler(settings, engine, StripeGateway(settings))
    subscribe_new_user(reconciler, emulator, settings.stripe_price_id or "", 7)
    [row] = subscriptions(reconciler.factory)
    path = f"/v1/subscriptions/{row.stripe_subscription_id}"
    fresh = json.loads(reconciler.gateway.get("subscriptions.retrieve", path))
    assert fresh["status"] == row.stripe_subscription_status == "active"


def test_never_synced_database_is_resynced_from_lists(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    add_user(reconciler.factory, 7, "seven")
    customer = emulator.sdk.v1.customers.create(
        params={"metadata": {"github_user_id": "7"}, **CARD}
    )
    emulator.sdk.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": stripe_settings.stripe_price_id or ""}],
        }
    )
    with reconciler.factory() as session:
        assert ledger.read_int_state(session, ledger.CURSOR) is None
    reconciler.drain()
    [row] = subscriptions(reconciler.factory)
    assert row.stripe_subscription_status == "active"
    with reconciler.factory() as session:
        assert ledger.read_int_state(session, ledger.LAST_RESYNC_AT) is not None


def test_a_cursor_past_the_retention_window_triggers_resync(
    reconciler: Reconciler, emulator: Emulator
) -> None:
    reconciler.drain()
    with reconciler.factory() as session, session.begin():
        ledger.write_state(session, ledger.LAST_DRAIN_AT, int(time.time()) - 31 * 86400)
        ledger.write_state(session, ledger.LAST_RESYNC_AT, 0)
    reconciler.drain()
    with reconciler.factory() as session:
        assert (ledger.read_int_state(session, ledger.LAST_RESYNC_AT) or 0) > time.time() - 60


def test_unknown_customers_are_counted_and_skipped(
    reconciler: Reconciler, emulator: Emulator
) -> None:
    reconciler.drain()
    emulator.sdk.v1.customers.create(params={"email": "stranger@example.com"})
    emulator.sdk.v1.customers.create(params={"metadata": {"github_user_id": "999"}})
    report = reconciler.drain()
    assert report.stats.total("unmatched") == 2
    with reconciler.factory() as session:
        assert session.scalar(select(func.count()).select_from(BillingCustomer)) == 0
        customer_events = ProcessedStripeEvent.stripe_event_type.like("customer.%")
        processed = select(func.count()).select_from(ProcessedStripeEvent)
        assert session.scalar(processed.where(customer_events)) == 2


def test_customers_of_another_product_cost_no_stripe_reads_until_their_user_appears(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    """Another product shares the Stripe account: its customers' events name no user of
    ours. They, and their subscriptions' events, are settled from the events alone (every
    subscription event of an unknown customer read that customer, one at a time). One of
    them names GitHub user 999: once that user is created, the next poll links it, with
    its subscription."""
    reconciler.drain()
    price = stripe_settings.stripe_price_id or ""
    others = [
        emulator.sdk.v1.customers.create(params={"email": f"other{n}@example.com", **CARD})
        for n in range(20)
    ]
    named = emulator.sdk.v1.customers.create(params={"metadata": {"github_user_id": "999"}, **CARD})
    reconciler.drain()  # their `customer.created` events, in a poll of their own
    for customer in [*others, named]:
        emulator.sdk.v1.subscriptions.create(
            params={"customer": customer.id, "items": [{"price": price}]}
        )
    emulator.control("DELETE", "requests")

    report = reconciler.drain()

    # Their invoices' events too (created, finalized, paid in one second: a tie a read
    # would settle for a customer of ours).
    reads = emulator.control("GET", "requests")["by_route"]
    assert set(reads) == {"GET /v1/events"}, reads
    assert report.stats.total("unmatched") >= 21  # each subscription's events
    assert report.stats.total("applied") == 0
    assert subscriptions(reconciler.factory) == []

    add_user(reconciler.factory, 999, "late")
    reconciler.drain()
    [row] = subscriptions(reconciler.factory)
    assert row.stripe_subscription_status == "active"
    with reconciler.factory() as session:
        linked = session.scalars(select(BillingCustomer.stripe_customer_id)).all()
    assert linked == [named.id]


def test_a_customer_made_elsewhere_is_matched_by_metadata(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    reconciler.drain()
    add_user(reconciler.factory, 42, "answer")
    customer = emulator.sdk.v1.customers.create(
        params={"metadata": {"github_user_id": "42"}, **CARD}
    )
    emulator.sdk.v1.subscriptions.create(
        params={
            "customer": customer.id,
            "items": [{"price": stripe_settings.stripe_price_id or ""}],
        }
    )
    reconciler.drain()
    with reconciler.factory() as session:
        linked = session.scalars(select(BillingCustomer)).one()
    assert linked.stripe_customer_id == customer.id
    [row] = subscriptions(reconciler.factory)
    assert row.stripe_subscription_status == "active"


def test_a_deleted_customer_is_kept_as_a_tombstone(
    reconciler: Reconciler, emulator: Emulator, stripe_settings: Settings
) -> None:
    subscribe_new_user(reconciler, emulator, stripe_settings.stripe_price_id or "", 5)
    with reconciler.factory() as session:
        customer_id = session.scalars(select(BillingCustomer.stripe_customer_id)).one()
    emulator.sdk.v1.customers.delete(customer_id)
    reconciler.drain()
    with reconciler.factory() as session:
        customer = session.scalars(select(BillingCustomer)).one()
    assert customer.stripe_deleted_at is not None
    [row] = subscriptions(reconciler.factory)
    assert row.stripe_subscription_status == "canceled"
    # A new checkout makes a new customer rather than reusing the deleted one.
    url = checkout(reconciler, stripe_settings.stripe_price_id or "", 5)
    with reconciler.factory() as session:
        customer = session.scalars(select(BillingCustomer)).one()
    assert customer.stripe_customer_id != customer_id
    assert customer.stripe_deleted_at is None
    assert url
