"""Benchmarks of the state document and its notifications, as the host app feels them:
`GET /billing/state` latency at a steady rate, and the delay from the commit of a state
change to the delivery of its `billing.state.updated` to a receiver."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.api import deliveries, latency_metrics, percentile_ms, signed_request, with_subscriptions
from bench.drains import Result
from bench.harness import ADMIN_TOKEN, FAST, Context, database, serve
from bench.load import closed_loop, paced, run_load

CUSTOMERS = 1_000
NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def state_request(index: int) -> bytes:
    return (
        f"GET /billing/state?github_user_id={index % CUSTOMERS + 1} HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    ).encode()


def state(
    ctx: Context, engine: str, seconds: float, rate: float, serve_args: list[str]
) -> list[Result]:
    """`GET /billing/state?github_user_id=N` for 1,000 subscribed users, paced at `rate`."""
    with database(ctx, engine) as db:
        with_subscriptions(ctx, db)
        with serve(ctx, db, serve_args, STRIPE_REQUESTS_PER_SECOND=FAST) as port:
            run_load(closed_loop(port, min(0.5, seconds), 8, state_request))  # warm up
            load = run_load(paced(port, max(1, int(rate * seconds)), rate, state_request))
    metrics = latency_metrics(load, load.latencies) | {"rate_per_s": rate}
    p99 = metrics["p99_ms"]
    targets = {"no errors": metrics["errors"] == 0, "p99 < 10 ms": p99 is not None and p99 < 10}
    return [Result("state", engine, len(load.latencies), metrics, targets)]


@contextlib.contextmanager
def receiver() -> Iterator[tuple[str, list[tuple[float, dict[str, Any]]]]]:
    """A receiver answering 204 at once; yields its URL and (arrival time, body) pairs."""
    received: list[tuple[float, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append((time.time(), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/billing", received
    finally:
        server.shutdown()
        server.server_close()


def wait_for(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def notify(
    ctx: Context, engine: str, count: int, rate: float, serve_args: list[str]
) -> list[Result]:
    """`count` state changes at `rate` (signed webhooks flipping subscriptions between active
    and past_due, each one user's change), into `serve` with its sender on: the delay from
    each notification's commit (its `timestamp`, written in the transaction) to its arrival."""
    with database(ctx, engine) as db:
        subscriptions = with_subscriptions(ctx, db)
        first = int(ctx.emulator.control("GET", "clock")["now"]) + 1
        request = signed_request(deliveries(subscriptions, count, rate, first))
        with receiver() as (url, received):
            env = {
                "RECONCILE_ENABLED": "true",
                "BILLING_NOTIFY_URLS": url,
                "BILLING_NOTIFY_SECRET": NOTIFY_SECRET,
            }
            with serve(ctx, db, serve_args, **env) as port:
                # The first poll's documents (one per subscribed user) go out first.
                wait_for(lambda: len(received) >= len(subscriptions), 120)
                before = len(received)
                load = run_load(paced(port, count, rate, request))
                delivered = wait_for(lambda: len(received) >= before + count, 120)
            arrivals = received[before:]
    delays = [at - _seconds(body["timestamp"]) for at, body in arrivals]
    metrics = {
        "changes": count,
        "rate_per_s": rate,
        "delivered": len(arrivals),
        "webhook_errors": len(load.latencies) - load.statuses.get(200, 0),
        "p50_ms": percentile_ms(delays, 50),
        "p99_ms": percentile_ms(delays, 99),
        "max_ms": percentile_ms(delays, 100),
        # What the webhook senders waited meanwhile: the sender's writes share the database.
        "webhook_p99_ms": percentile_ms(load.latencies, 99),
    }
    p99 = metrics["p99_ms"]
    targets = {
        "every change delivered": delivered and len(arrivals) == count,
        "p99 < 1 s": p99 is not None and p99 < 1000,
    }
    return [Result("notify", engine, count, metrics, targets)]


def _seconds(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
