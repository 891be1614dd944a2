"""Benchmarks of `serve`: Stripe's webhook deliveries and the admin API, as their senders
feel them (latency from sending to the answer)."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.drains import Result, checked, prepare
from bench.harness import (
    ADMIN_TOKEN,
    FAST,
    WEBHOOK_SECRET,
    Context,
    Database,
    database,
    reconcile_once,
    serve,
    service_env,
)
from bench.load import Load, closed_loop, paced, percentile, run_load

CUSTOMERS = 1_000


def with_subscriptions(ctx: Context, db: Database) -> list[dict[str, Any]]:
    """Users 1..1,000, each with a customer and a subscription that the service mirrors."""
    prepare(ctx, db, 2 * CUSTOMERS, per_customer=2)
    checked(reconcile_once(ctx, db, timeout=600))
    subscriptions: list[dict[str, Any]] = ctx.emulator.control("GET", "state")["subscriptions"]
    return subscriptions


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """A `Stripe-Signature` header, as Stripe computes it."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def deliveries(
    subscriptions: list[dict[str, Any]], count: int, rate: float, first: int
) -> list[bytes]:
    """`customer.subscription.updated` events flipping the status, seconds apart at `rate`."""
    bodies = []
    statuses = {s["id"]: s["status"] for s in subscriptions}
    for i in range(count):
        sub = dict(subscriptions[i % len(subscriptions)])
        old = statuses[sub["id"]]
        sub["status"] = statuses[sub["id"]] = "past_due" if old == "active" else "active"
        event = {
            "id": f"evt_bench_{i:08d}", "object": "event", "api_version": "2026-08-26.dahlia",
            "created": first + int(i / rate), "type": "customer.subscription.updated",
            "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": sub, "previous_attributes": {"status": old}},
        }  # fmt: skip
        bodies.append(json.dumps(event).encode())
    return bodies


def signed_request(bodies: list[bytes]) -> Callable[[int], bytes]:
    def request(index: int) -> bytes:
        body = bodies[index]
        signature = sign(body, WEBHOOK_SECRET, int(time.time())).encode()
        return (
            b"POST /stripe/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nStripe-Signature: " + signature + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    return request


def start_drain(
    ctx: Context, db: Database, events: int
) -> tuple[subprocess.Popen[bytes], list[float], float]:
    """Users and a backlog of `events` events of other customers, drained by `reconcile
    --once` (returned once it asked Stripe for events), a list that gets its end time, and
    its start time."""
    customers = events // 10
    db.add_users(CUSTOMERS + 1, customers)
    ctx.emulator.advance(8 * 86_400)
    ctx.emulator.generate(customers, 10, first_github_user_id=CUSTOMERS + 1)
    ctx.emulator.control("DELETE", "requests")
    started = time.perf_counter()
    process = subprocess.Popen(
        ctx.command("reconcile", "--once"), env=service_env(ctx, db), cwd=ctx.workdir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ended: list[float] = []
    threading.Thread(target=lambda: (process.wait(), ended.append(time.perf_counter()))).start()
    while not ctx.emulator.requests()["total"] and process.poll() is None:
        time.sleep(0.05)
    return process, ended, started


LIVE_RATE = "100"


@contextlib.contextmanager
def drain_in_serve(
    ctx: Context, db: Database, events: int, serve_args: list[str]
) -> Iterator[tuple[int, list[float]]]:
    """`serve` with its reconciler on, draining a backlog of `events` events of other
    customers; yields its port and a list that gets the drain's end time."""
    customers = events // 10
    db.add_users(CUSTOMERS + 1, customers)
    ctx.emulator.advance(8 * 86_400)
    expected = (
        db.processed()
        + ctx.emulator.generate(customers, 10, first_github_user_id=CUSTOMERS + 1)["events"]
    )
    ended: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set() and db.processed() < expected:
            time.sleep(0.2)
        ended.append(time.perf_counter())

    env = {
        "RECONCILE_ENABLED": "true",
        "RECONCILE_INTERVAL_SECONDS": "0.5",
        "RECONCILE_SAFETY_INTERVAL_SECONDS": "1",
    }
    # At Stripe's live read rate, as a deployment drains (an unthrottled drain on this
    # machine's two cores is not a case users meet).
    with serve(ctx, db, serve_args, STRIPE_REQUESTS_PER_SECOND=LIVE_RATE, **env) as port:
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            yield port, ended
        finally:
            done.set()
            watcher.join()


def webhook(
    ctx: Context, engine: str, count: int, rate: float, drain_events: int, serve_args: list[str]
) -> Result:
    """Signed deliveries at `rate` (an open loop, as Stripe sends them); with `drain_events`,
    while `reconcile --once` drains that many events into the same database (only the
    deliveries sent before the drain ended count)."""
    with database(ctx, engine) as db:
        subscriptions = with_subscriptions(ctx, db)
        first = int(ctx.emulator.control("GET", "clock")["now"]) + 1
        request = signed_request(deliveries(subscriptions, count, rate, first))
        if drain_events and engine == "sqlite":
            # SQLite has one writing process: the drain runs in `serve`, as deployed.
            with drain_in_serve(ctx, db, drain_events, serve_args) as (port, ended):
                load = run_load(paced(port, count, rate, request))
            drain = None
        else:
            drain, ended, started = (
                start_drain(ctx, db, drain_events) if drain_events else (None, [], 0.0)
            )
            with serve(ctx, db, serve_args) as port:
                load = run_load(paced(port, count, rate, request))
        if drain is not None and drain.wait(timeout=3600) != 0:
            raise RuntimeError("reconcile --once failed during the webhook benchmark")
    latencies = [
        latency
        for sent_at, latency in zip(load.sent_at, load.latencies, strict=True)
        if not ended or sent_at < ended[0]
    ]
    m = latency_metrics(load, latencies) | {"rate_per_s": rate, "drain_events": drain_events}
    if drain is not None:  # the drain's own time, from its start to its exit
        m["drain_seconds"] = round(ended[0] - started, 1)
    p99 = m["p99_ms"]
    targets = {
        "all answered 200": load.statuses == {200: count},
        "p99 < 50 ms": p99 is not None and p99 < 50,
    }
    if drain_events:
        targets["drain outlasted 100 deliveries"] = len(latencies) >= 100
    return Result("webhook-drain" if drain_events else "webhook", engine, count, m, targets)


def admin_request(index: int) -> bytes:
    return (
        f"GET /billing/subscriptions?github_user_id={index % CUSTOMERS + 1} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    ).encode()


def admin(
    ctx: Context, engine: str, seconds: float, rate: float, concurrency: int, serve_args: list[str]
) -> list[Result]:
    """`GET /billing/subscriptions?github_user_id=N`: from `concurrency` keep-alive connections
    for `seconds` (closed loop: the most it serves), then paced at `rate` for as long."""
    with database(ctx, engine) as db:
        with_subscriptions(ctx, db)
        with serve(ctx, db, serve_args, STRIPE_REQUESTS_PER_SECOND=FAST) as port:
            run_load(closed_loop(port, min(0.5, seconds), concurrency, admin_request))  # warm
            closed = run_load(closed_loop(port, seconds, concurrency, admin_request))
            at_rate = run_load(paced(port, max(1, int(rate * seconds)), rate, admin_request))
    most = latency_metrics(closed, closed.latencies) | {"concurrency": concurrency}
    paced_metrics = latency_metrics(at_rate, at_rate.latencies) | {"rate_per_s": rate}
    most_targets = {
        "no errors": most["errors"] == 0,
        ">= 2,000 req/s": most["requests_per_s"] >= 2000,
    }
    p99 = paced_metrics["p99_ms"]
    paced_targets = {
        "no errors": paced_metrics["errors"] == 0,
        "p99 < 20 ms": p99 is not None and p99 < 20,
    }
    return [
        Result("admin", engine, len(closed.latencies), most, most_targets),
        Result("admin-paced", engine, len(at_rate.latencies), paced_metrics, paced_targets),
    ]


def latency_metrics(load: Load, latencies: list[float]) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(load.latencies) / load.seconds),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": percentile_ms(latencies, 100),
        "errors": len(load.latencies) - load.statuses.get(200, 0),
    }


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(1000 * percentile(latencies, q), 1) if latencies else None


def sync_request(index: int) -> bytes:
    body = json.dumps({"github_user_id": index % CUSTOMERS + 1}).encode()
    return (
        b"POST /billing/subscriptions/sync HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


def sync(
    ctx: Context, engine: str, count: int, rate: float, latency_ms: int, serve_args: list[str]
) -> Result:
    """`POST /billing/subscriptions/sync {github_user_id}` paced at `rate` against a Stripe
    `latency_ms` away (every answer late by that much): what a user back from Checkout waits."""
    with database(ctx, engine) as db:
        with_subscriptions(ctx, db)
        ctx.emulator.control("POST", "faults", {"latency_ms": latency_ms, "path_prefix": "/v1"})
        ctx.emulator.control("DELETE", "requests")
        try:
            with serve(ctx, db, serve_args, STRIPE_REQUESTS_PER_SECOND=LIVE_RATE) as port:
                load = run_load(paced(port, count, rate, sync_request))
        finally:
            ctx.emulator.control("DELETE", "faults")
        reads = ctx.emulator.requests()["total"]
    m = latency_metrics(load, load.latencies) | {
        "rate_per_s": rate,
        "stripe_latency_ms": latency_ms,
        "stripe_requests": reads,
    }
    p99 = m["p99_ms"]
    targets = {
        "all answered 200": load.statuses == {200: count},
        "p99 < 1 s": p99 is not None and p99 < 1000,
    }
    return Result("sync", engine, count, m, targets)
