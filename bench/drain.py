"""Draining a backlog: the service (`reconcile --once`), the original per-event loop, the limit.

All three write the same rows for the same backlog, so their events/s compare directly.
"""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import func, insert, select

from bench.common import (
    EMULATOR_KEY,
    Database,
    EmulatorProcess,
    Result,
    reconcile_once,
    seed_users,
)
from collab_billing.config import load_settings
from collab_billing.db import ledger, mirror
from collab_billing.db.engine import make_session_factory
from collab_billing.db.models import (
    BillingCustomer,
    BillingSubscription,
    ProcessedStripeEvent,
    User,
)
from collab_billing.reconcile.events import RELEVANT_TYPES, github_user_id_of, object_kind
from collab_billing.stripe_gateway import StripeGateway
from collab_billing.stripe_objects import Event, ObjectFields
from stripe_emulator.ids import FastIds

EVENTS_PER_CUSTOMER = 10


TIE_BURSTS = 500  # subscriptions that get two more updates within one second, at the end


def prepare_backlog(
    db: Database, emulator: EmulatorProcess, events: int, tie_bursts: int = TIE_BURSTS
) -> dict[str, Any]:
    """Users 1..N/10 and a backlog of about `events` events: per customer `customer.created`,
    `customer.subscription.created`, then a mix of updates (cancel toggles, status flips,
    customer updates, ~10% deleted at the end) spread over a week (so events of different
    objects share seconds), plus bursts where one subscription changes twice within a second
    (ties on one object, resolved from `previous_attributes`)."""
    customers = max(1, events // EVENTS_PER_CUSTOMER)
    emulator.reset()
    price = emulator.price()
    # The service had polled before it stopped: its cursor is the `created` of the last event
    # it saw (a customer of another app here), which the next poll starts walking up from.
    last_seen = emulator.api("POST", "/v1/customers", {"email": "before@example.com"})
    # Generated events spread over the week before the emulator's "now" but never before its
    # newest event: move the clock on so that they spread over a real week.
    emulator.control("POST", "clock/advance", {"seconds": 8 * 86_400})
    seed_users(db, customers, cursor=int(last_seen["created"]))
    bursts = min(tie_bursts, customers // 20)
    generated = emulator.generate(customers, EVENTS_PER_CUSTOMER, price=price)
    if bursts:
        subs: list[dict[str, Any]] = []
        while len(subs) < bursts:
            params: dict[str, Any] = {"limit": min(100, bursts - len(subs)), "status": "active"}
            if subs:
                params["starting_after"] = subs[-1]["id"]
            page = emulator.api("GET", "/v1/subscriptions", params)
            subs.extend(page["data"])
            if not page["has_more"]:
                break
        for sub in subs:
            for status in ("past_due", "active"):
                emulator.control("POST", f"subscriptions/{sub['id']}/status", {"status": status})
    generated["events"] = relevant_events(emulator)
    return generated


def relevant_events(emulator: EmulatorProcess) -> int:
    """How many events the reconciler reads (the types it asks for)."""
    state = emulator.control("GET", "state")
    return int(state["event_count"]) - 2  # less the product's and the price's


def count_rows(db: Database) -> tuple[int, int]:
    engine = db.engine()
    with engine.connect() as connection:
        processed = connection.scalar(select(func.count()).select_from(ProcessedStripeEvent))
        subs = connection.scalar(select(func.count()).select_from(BillingSubscription))
    engine.dispose()
    return int(processed or 0), int(subs or 0)


def check_against_emulator(db: Database, emulator: EmulatorProcess) -> int:
    """Every subscription row has the emulator's status and cancel flag; returns mismatches."""
    state = emulator.control("GET", "state")
    expected = {s["id"]: s for s in state["subscriptions"]}
    engine = db.engine()
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                BillingSubscription.stripe_subscription_id,
                BillingSubscription.stripe_subscription_status,
                BillingSubscription.stripe_cancel_at_period_end,
            )
        ).all()
    engine.dispose()
    bad = len(set(expected) - {r[0] for r in rows})
    for sub_id, status, cancel in rows:
        sub = expected.get(sub_id)
        if sub is None or sub["status"] != status or sub["cancel_at_period_end"] != cancel:
            bad += 1
    return bad


def bench_apply(
    db: Database, emulator: EmulatorProcess, events: int, workdir: Path, verify: bool
) -> list[Result]:
    """Backlog of `events` drained by `reconcile --once`, then one idle poll."""
    generated = prepare_backlog(db, emulator, events)
    run, poll = reconcile_once(db, emulator.url, workdir, STRIPE_REQUESTS_PER_SECOND="100000")
    processed, subs = count_rows(db)
    if processed != generated["events"]:
        raise RuntimeError(f"drained {processed} of {generated['events']} events")
    mismatches = check_against_emulator(db, emulator) if verify else None
    drain_seconds = float(poll["seconds"])
    apply = Result(
        "apply",
        db.engine_name,
        generated["events"],
        {
            "events_per_s": round(generated["events"] / drain_seconds),
            "events_per_s_wall": round(generated["events"] / run.seconds),
            "drain_s": round(drain_seconds, 2),
            "process_s": round(run.seconds, 2),
            "peak_rss_mb": round(run.peak_rss_mb, 1),
            # Its worker's (the walk of the event list) and multiprocessing's tracker's.
            "helpers_peak_rss_mb": round(run.helpers_peak_rss_mb, 1),
            "requests": poll.get("requests"),
            "worker_pages": poll.get("worker_pages"),
            "stripe_reads": poll.get("stripe_reads"),
            "subscriptions": subs,
            "mismatches": mismatches,
            # The drain's share spent waiting for events from the reading thread.
            "read_wait_pct": round(100 * float(poll["read_wait_seconds"]) / drain_seconds, 1),
            # The whole machine's, while `reconcile --once` ran (start-up included).
            "machine_idle_pct": run.machine_cpu.get("idle_pct"),
            "machine_steal_pct": run.machine_cpu.get("steal_pct"),
        },
    )
    _, idle_poll = reconcile_once(db, emulator.url, workdir)
    idle = Result(
        "idle",
        db.engine_name,
        generated["events"],
        {
            "requests_per_poll": int(idle_poll["requests"]) + int(idle_poll["stripe_reads"]),
            "poll_ms": round(float(idle_poll["seconds"]) * 1000, 1),
        },
    )
    return [apply, idle]


# -- the original design: one transaction per event -------------------------------------------


def bench_baseline(db: Database, emulator: EmulatorProcess, events: int) -> Result:
    """The straightforward loop: read the backlog, then for each event, oldest first, one
    transaction that checks the ledger, applies the event and records it."""
    generated = prepare_backlog(db, emulator, events)
    settings = load_settings(
        database_url=db.url,
        stripe_api_key=SecretStr(EMULATOR_KEY),
        stripe_api_base=emulator.url,
        stripe_requests_per_second=100000.0,
        _env_file=None,
    )
    gateway = StripeGateway(settings)
    engine = db.engine()
    factory = make_session_factory(engine)
    with factory() as session:
        cursor = ledger.read_int_state(session, ledger.CURSOR) or 0
    started = time.perf_counter()
    backlog: list[Event] = []
    starting_after = None
    while True:
        page = gateway.list_events(
            types=RELEVANT_TYPES, created_gte=cursor - 60, starting_after=starting_after
        )
        backlog.extend(page.events)
        if not page.has_more or not page.events:
            break
        starting_after = page.events[-1].id
    backlog.reverse()
    backlog.sort(key=lambda e: e.created)
    for event in backlog:
        with factory() as session, session.begin():
            if ledger.processed_ids(session, [event.id]):
                continue
            _apply_one(session, event.payload)
            ledger.claim(session, [event])
    seconds = time.perf_counter() - started
    engine.dispose()
    return Result(
        "baseline",
        db.engine_name,
        generated["events"],
        {"events_per_s": round(generated["events"] / seconds), "drain_s": round(seconds, 2)},
        "one transaction per event",
    )


def _apply_one(session: Any, event: dict[str, Any]) -> None:
    obj = event["data"]["object"]
    kind = object_kind(event["type"])
    if kind == "customer":
        if event["type"] == "customer.deleted":
            mirror.mark_customers_deleted(session, [obj["id"]])
        elif not mirror.customer_rows(session, [obj["id"]]):
            user = mirror.user_id_for_github_id(
                session, github_user_id_of(ObjectFields.from_dict(obj)) or 0
            )
            if user is not None:
                mirror.link_customer_if_free(session, user, obj["id"])
    elif kind == "subscription":
        mark = mirror.subscription_watermarks(session, [obj["id"]]).get(obj["id"])
        if mark is not None and int(event["created"]) < mark:
            return
        state = mirror.SubscriptionState.from_stripe(obj, int(event["created"]))
        known = mirror.customer_rows(session, [state.stripe_customer_id])
        if state.stripe_customer_id in known:
            mirror.upsert_subscriptions(session, [state], known)


# -- the limit: bare database writes ---------------------------------------------------------


BATCH = 2_000


def bench_limit(db: Database, events: int) -> Result:
    """One processed-event row and one subscription upsert per event, 2,000 events a
    transaction, straight through the driver: no HTTP, no JSON, no ORM."""
    customers = max(1, events // EVENTS_PER_CUSTOMER)
    engine = db.engine()
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        for start in range(0, customers, 10_000):
            stop = min(start + 10_000, customers)
            session.execute(
                insert(User),
                [{"github_user_id": n + 1, "github_login": f"u{n}"} for n in range(start, stop)],
            )
            session.execute(
                insert(BillingCustomer),
                [{"user_id": n + 1, "stripe_customer_id": f"cus_{n}"} for n in range(start, stop)],
            )
    engine.dispose()
    rng = random.Random(7)
    base = int(time.time()) - 7 * 86_400
    event_ids = FastIds(7)
    rows = []
    for i in range(events):
        customer = i % customers
        status = rng.choice(("active", "past_due", "active", "canceled"))
        created = base + i // 2
        rows.append(
            (
                # Shaped as Stripe's and the emulator's: in order by the second, random
                # within it (fully random ids put each row on a random page of the index).
                event_ids.new("evt", created),
                "customer.subscription.updated",
                created,
                f"sub_{customer}",
                customer + 1,
                status,
                bool(i & 1),
            )
        )
    write = _limit_sqlite if db.engine_name == "sqlite" else _limit_postgres
    seconds = write(db, rows)
    return Result(
        "limit",
        db.engine_name,
        events,
        {"events_per_s": round(events / seconds), "drain_s": round(seconds, 2)},
        "bare writes, 2,000 events a transaction",
    )


def _limit_sqlite(db: Database, rows: list[tuple[Any, ...]]) -> float:
    path = db.url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    started = time.perf_counter()
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO processed_stripe_events (stripe_event_id, stripe_event_type, "
            "stripe_event_created_timestamp, processed_at) VALUES (?, ?, ?, CURRENT_TIMESTAMP) "
            "ON CONFLICT DO NOTHING",
            [(r[0], r[1], r[2]) for r in batch],
        )
        connection.executemany(
            "INSERT INTO billing_subscriptions (billing_customer_id, stripe_subscription_id, "
            "stripe_subscription_status, stripe_cancel_at_period_end, stripe_state_as_of, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP) "
            "ON CONFLICT (stripe_subscription_id) DO UPDATE SET "
            "stripe_subscription_status = excluded.stripe_subscription_status, "
            "stripe_cancel_at_period_end = excluded.stripe_cancel_at_period_end, "
            "stripe_state_as_of = excluded.stripe_state_as_of, updated_at = CURRENT_TIMESTAMP",
            [(r[4], r[3], r[5], r[6], r[2]) for r in batch],
        )
        connection.execute("COMMIT")
    seconds = time.perf_counter() - started
    connection.close()
    return seconds


def _limit_postgres(db: Database, rows: list[tuple[Any, ...]]) -> float:
    import psycopg

    dsn = db.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as connection:
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            latest = {r[3]: r for r in batch}  # one upsert per row and statement
            with connection.transaction():
                connection.execute(
                    "INSERT INTO processed_stripe_events (stripe_event_id, stripe_event_type, "
                    "stripe_event_created_timestamp) SELECT * FROM "
                    "unnest(%s::text[], %s::text[], %s::bigint[]) ON CONFLICT DO NOTHING",
                    ([r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]),
                )
                values = list(latest.values())
                connection.execute(
                    "INSERT INTO billing_subscriptions (billing_customer_id, "
                    "stripe_subscription_id, stripe_subscription_status, "
                    "stripe_cancel_at_period_end, stripe_state_as_of) SELECT * FROM "
                    "unnest(%s::bigint[], %s::text[], %s::text[], %s::bool[], %s::bigint[]) "
                    "ON CONFLICT (stripe_subscription_id) DO UPDATE SET "
                    "stripe_subscription_status = excluded.stripe_subscription_status, "
                    "stripe_cancel_at_period_end = excluded.stripe_cancel_at_period_end, "
                    "stripe_state_as_of = excluded.stripe_state_as_of, updated_at = now()",
                    (
                        [r[4] for r in values],
                        [r[3] for r in values],
                        [r[5] for r in values],
                        [r[6] for r in values],
                        [r[2] for r in values],
                    ),
                )
        return time.perf_counter() - started
