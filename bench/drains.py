"""Benchmarks of a drain: `reconcile --once` of a backlog that the emulator generated, timed
from the start of the process to its exit; Stripe requests counted by the emulator."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bench.harness import FAST, Context, Database, Run, database, reconcile_once

PAGE = 100
LIVE_MODE_RATE = 100  # requests/s: Stripe's live-mode limit, as a live service sets it
TEST_MODE_RATE = 25  # requests/s: Stripe's test-mode limit
WEEK = 7 * 86_400


@dataclass
class Result:
    benchmark: str
    engine: str
    size: int
    metrics: dict[str, Any]
    targets: dict[str, bool] = field(default_factory=dict)  # "what is asked": met


def checked(run: Run) -> Run:
    if run.returncode != 0:
        raise RuntimeError(f"the service failed ({run.returncode}):\n{run.output_tail}")
    return run


def prepare(
    ctx: Context, db: Database, events: int, per_customer: int = 10, empty_account: bool = False,
    **generate: Any,
) -> dict[str, Any]:  # fmt: skip
    """Users 1..N, a first `reconcile --once` (the service's first poll: a resync), then a
    backlog of about `events` events (N customers' events). The account holds, at the first
    poll, one customer of another app (the cursor then sits at its event, below the backlog,
    spread over the week after), or nothing (`empty_account`: the backlog comes after a poll
    that saw no event at all)."""
    emulator = ctx.emulator
    emulator.control("DELETE", "state")
    emulator.generate(0)  # the price first: its events would otherwise be the newest
    if not empty_account:
        emulator.api("POST", "/v1/customers", {"email": "another-app@example.com"})
    customers = max(1, events // per_customer)
    db.add_users(1, customers)
    checked(reconcile_once(ctx, db, timeout=600))
    emulator.advance(8 * 86_400 if not empty_account else 60)
    return emulator.generate(customers, per_customer, **generate)


def drain(
    ctx: Context, db: Database, generated: dict[str, Any], timeout: float, verify: bool, **env: str
) -> dict[str, Any]:
    """`reconcile --once` of the backlog: its speed, requests, memory and whether it is all
    applied (and, with `verify`, whether every subscription row matches the emulator's)."""
    ctx.emulator.control("DELETE", "requests")
    before = db.processed()
    run = reconcile_once(ctx, db, timeout, **env)
    counts = ctx.emulator.requests()
    applied = db.processed() - before
    pages = counts["by_route"].get("GET /v1/events", 0)
    metrics: dict[str, Any] = {
        "events": generated["events"],
        "applied": applied,
        "seconds": round(run.seconds, 2),
        "events_per_s": round(applied / run.seconds),
        "requests": counts["total"],
        "event_pages": pages,
        "rereads": counts["total"] - pages,
        "error_answers": counts["total"] - counts["by_status"].get("200", 0),
        "max_in_flight": counts["max_in_flight"],
        "exit_code": run.returncode,
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "children_peak_rss_mb": round(run.children_peak_rss_mb, 1),
        "children_started": run.children,
    }
    if verify:
        metrics["mismatches"] = mismatches(ctx, db)
    if run.returncode != 0:
        print(f"reconcile --once exited {run.returncode}:\n{run.output_tail}", flush=True)
    return metrics


def mismatches(ctx: Context, db: Database) -> int:
    """Subscriptions whose row is missing or differs from the emulator (status, cancel flag)."""
    expected, rows = ctx.emulator.subscriptions(), db.subscriptions()
    return sum(1 for sub_id, state in expected.items() if rows.get(sub_id) != state)


def complete(metrics: dict[str, Any]) -> bool:
    ok = metrics["exit_code"] == 0 and metrics["applied"] == metrics["events"]
    return ok and metrics.get("mismatches", 0) == 0


def far(ctx: Context, engine: str, events: int, latency_ms: int, timeout: float) -> Result:
    """Every Stripe answer `latency_ms` late (a distant Stripe), the client throttle at the
    live-mode limit: the ceiling is 100 pages a second, 10,000 events/s."""
    with database(ctx, engine) as db:
        generated = prepare(ctx, db, events)
        ctx.emulator.control("POST", "faults", {"latency_ms": latency_ms, "path_prefix": "/v1"})
        try:
            m = drain(ctx, db, generated, timeout, True, STRIPE_REQUESTS_PER_SECOND="100")
        finally:
            ctx.emulator.control("DELETE", "faults")
    ceiling = LIVE_MODE_RATE * PAGE
    m |= {"latency_ms": latency_ms, "ceiling_pct": round(100 * m["events_per_s"] / ceiling, 1)}
    targets = {
        "complete": complete(m),
        ">= 80% of 10,000 events/s": m["events_per_s"] >= 0.8 * ceiling,
        "<= 16 requests in flight": m["max_in_flight"] <= 16,
    }
    return Result(f"far-{latency_ms}ms", engine, events, m, targets)


def testmode(ctx: Context, engine: str, events: int, ties: int, timeout: float) -> Result:
    """The emulator allows 25 requests/s (all of /v1), the client throttles at 25: the ceiling
    is a page per request, less the requests that `ties` unresolvable ties cost (a read each)."""
    with database(ctx, engine) as db:
        generated = prepare(ctx, db, events, ambiguous_ties=ties)
        limit = {"requests_per_second": TEST_MODE_RATE, "path_prefix": "/v1"}
        ctx.emulator.control("POST", "rate_limit", limit)
        try:
            rate = str(TEST_MODE_RATE)
            m = drain(ctx, db, generated, timeout, True, STRIPE_REQUESTS_PER_SECOND=rate)
        finally:
            ctx.emulator.control("DELETE", "rate_limit")
    needed = math.ceil(m["events"] / PAGE) + generated["ambiguous_ties"]
    ceiling = m["events"] * TEST_MODE_RATE / needed
    m |= {"ambiguous_ties": generated["ambiguous_ties"], "ceiling_events_per_s": round(ceiling)}
    m["ceiling_pct"] = round(100 * m["events_per_s"] / ceiling, 1)
    targets = {"complete": complete(m), ">= 95% of the ceiling": m["ceiling_pct"] >= 95}
    return Result("testmode-ties" if ties else "testmode", engine, events, m, targets)


def burst(ctx: Context, engine: str, events: int, fault_rate: float, timeout: float) -> Result:
    """A first poll saw an empty account; then `events` events came in 20 seconds, a third of
    them same-second pairs of one subscription's updates (and a few only a read settles).
    With `fault_rate`, that share of /v1/events requests is answered 429, 500 or 503."""
    with database(ctx, engine) as db:
        generated = prepare(
            ctx, db, events, empty_account=True, span_seconds=20, same_second_share=0.3,
            ambiguous_ties=events // 400,
        )  # fmt: skip
        faults = {"rate": fault_rate, "statuses": [429, 500, 503], "path_prefix": "/v1/events"}
        if fault_rate:
            ctx.emulator.control("POST", "faults", faults | {"seed": 7})
        try:
            rate = str(LIVE_MODE_RATE)
            m = drain(ctx, db, generated, timeout, True, STRIPE_REQUESTS_PER_SECOND=rate)
        finally:
            ctx.emulator.control("DELETE", "faults")
    m["fault_rate"] = fault_rate
    targets = {"complete and committed": complete(m)}
    if not fault_rate:
        budget = m["events"] // PAGE + m["rereads"] + 10
        m["request_budget"] = budget
        targets["requests <= events/100 + re-reads + 10"] = m["requests"] <= budget
    return Result("burst-faults" if fault_rate else "burst", engine, events, m, targets)


def ties(ctx: Context, engine: str, events: int, timeout: float) -> Result:
    """A backlog where about a third of the events share their second with another event of
    the same subscription, in an order their payloads settle: re-reads per 100 events."""
    with database(ctx, engine) as db:
        generated = prepare(ctx, db, events, same_second_share=0.3)
        rate = str(LIVE_MODE_RATE)
        m = drain(ctx, db, generated, timeout, True, STRIPE_REQUESTS_PER_SECOND=rate)
    m["tied_pct"] = round(100 * generated["tied_events"] / generated["events"], 1)
    m["rereads_per_100_events"] = round(100 * m["rereads"] / m["events"], 2)
    targets = {
        "complete": complete(m),
        "<= 1 re-read per 100 events": m["rereads"] <= 0.01 * events,
    }
    return Result("ties", engine, events, m, targets)


def apply(ctx: Context, engine: str, events: int, verify: bool, timeout: float) -> Result:
    """A backlog from a local emulator (no latency, no throttle): how fast the service applies
    events, and its memory (its own and its child processes')."""
    with database(ctx, engine) as db:
        generated = prepare(ctx, db, events)
        m = drain(ctx, db, generated, timeout, verify, STRIPE_REQUESTS_PER_SECOND=FAST)
    m["total_peak_rss_mb"] = round(m["peak_rss_mb"] + m["children_peak_rss_mb"], 1)
    targets = {
        "complete": complete(m),
        ">= 10,000 events/s": m["events_per_s"] >= 10_000,
        "< 150 MB peak RSS (with children)": m["total_peak_rss_mb"] < 150,
    }
    return Result("apply", engine, events, m, targets)


def first_sync(ctx: Context, engine: str, customers: int, timeout: float) -> Result:
    """The first poll of an account that already holds `customers` customers, each with a
    subscription, into a new database: a resync from the list endpoints (no throttle), as a
    service adopted by an existing SaaS meets it."""
    emulator = ctx.emulator
    with database(ctx, engine) as db:
        emulator.control("DELETE", "state")
        emulator.generate(0)
        emulator.advance(8 * 86_400)
        emulator.generate(customers, 4)
        db.add_users(1, customers)
        emulator.control("DELETE", "requests")
        run = reconcile_once(ctx, db, timeout, STRIPE_REQUESTS_PER_SECOND=FAST)
        m: dict[str, Any] = {
            "seconds": round(run.seconds, 1),
            "customers_per_s": round(customers / run.seconds),
            "requests": emulator.requests()["total"],
            "exit_code": run.returncode,
            "peak_rss_mb": round(run.peak_rss_mb, 1),
            "mismatches": mismatches(ctx, db),
        }
    targets = {"complete": m["exit_code"] == 0 and m["mismatches"] == 0}
    return Result("first-sync", engine, customers, m, targets)
