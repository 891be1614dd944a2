"""Benchmarks of the running service: rate-limited fetch, webhooks, the admin API."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import insert

from bench.common import (
    PYTHON,
    ChildRun,
    Database,
    EmulatorProcess,
    Result,
    free_port,
    percentile,
    process_cpu_seconds,
    reconcile_once,
    seed_users,
    service_env,
    wait_for_http,
)
from bench.drain import prepare_backlog
from bench.load import GENERATOR, GENERATOR_SHORT, closed_loop, paced, run_load
from collab_billing.db.models import BillingCustomer, BillingSubscription, User

ADMIN_TOKEN = "bench-admin-token"
WEBHOOK_SECRET = "whsec_bench_secret"
RATE_LIMIT = 25.0  # requests per second on /v1/events, like Stripe's live-mode read limit
PAGE = 100
LIVE_MODE_RATE = 100  # requests per second: Stripe's live-mode limit, as a live service sets


# -- rate-limited fetch -------------------------------------------------------------------------


def bench_ratelimit(
    db: Database, emulator: EmulatorProcess, events: int, workdir: Path, tie_bursts: int = 0
) -> Result:
    """A backlog drained while the emulator allows 25 requests/s on `/v1/events`: the ceiling
    is 2,500 events/s, and fetching and applying must overlap to come near it. With
    `tie_bursts`, that many subscriptions end on a same-second tie that only a read of the
    subscription settles: each read takes a request from the same budget."""
    generated = prepare_backlog(db, emulator, events, tie_bursts=tie_bursts)
    limit = {"requests_per_second": RATE_LIMIT, "path_prefix": "/v1/events"}
    run, poll = _drain_while(db, emulator, workdir, ("rate_limit", limit), RATE_LIMIT)
    seconds = float(poll["seconds"])
    speed = generated["events"] / seconds
    ceiling = RATE_LIMIT * PAGE
    return Result(
        "ratelimit",
        db.engine_name,
        generated["events"],
        {
            "events_per_s": round(speed),
            "ceiling_pct": round(100 * speed / ceiling, 1),
            "requests": poll.get("requests"),
            "stripe_reads": poll.get("stripe_reads"),
            "drain_s": round(seconds, 2),
            "peak_rss_mb": round(run.peak_rss_mb, 1),
        },
        f"emulator limit {RATE_LIMIT:.0f} requests/s on /v1/events"
        + (f"; {poll.get('stripe_reads')} unresolvable ties, one read each" if tie_bursts else ""),
    )


def bench_latency(
    db: Database, emulator: EmulatorProcess, events: int, workdir: Path, latency_ms: int
) -> Result:
    """A backlog drained while the emulator answers each `/v1/events` request `latency_ms`
    late, as a distant Stripe does (the emulator's own answers take a few ms; Stripe's, over
    the internet, take on the order of 100-300 ms, a figure assumed here, not measured, as this
    machine has no network), with STRIPE_REQUESTS_PER_SECOND at Stripe's live-mode limit. One
    request at a time, the ceiling is a page per latency."""
    generated = prepare_backlog(db, emulator, events)
    late = {"latency_ms": latency_ms, "path_prefix": "/v1/events"}
    run, poll = _drain_while(db, emulator, workdir, ("faults", late), LIVE_MODE_RATE)
    seconds = float(poll["seconds"])
    speed = generated["events"] / seconds
    one_at_a_time = PAGE * 1000 / latency_ms
    return Result(
        "latency",
        db.engine_name,
        generated["events"],
        {
            "events_per_s": round(speed),
            "latency_ms": latency_ms,
            "vs_one_page_at_a_time_pct": round(100 * speed / one_at_a_time, 1),
            "requests": poll.get("requests"),
            "drain_s": round(seconds, 2),
            "peak_rss_mb": round(run.peak_rss_mb, 1),
        },
        f"emulator answers /v1/events {latency_ms} ms late",
    )


def _drain_while(
    db: Database,
    emulator: EmulatorProcess,
    workdir: Path,
    rule: tuple[str, dict[str, Any]],
    requests_per_second: float,
) -> tuple[ChildRun, dict[str, Any]]:
    """`reconcile --once` while the emulator applies `rule` (its control path and body)."""
    path, body = rule
    emulator.control("POST", path, body)
    try:
        return reconcile_once(
            db, emulator.url, workdir, STRIPE_REQUESTS_PER_SECOND=str(requests_per_second)
        )
    finally:
        emulator.control("DELETE", path)


# -- the service as a server ----------------------------------------------------------------------

# `serve --workers` as recommended for a 2-core box (docs/benchmarks.md): one process on
# SQLite (one writer at a time: a second process only adds turn-taking between processes to
# the webhook path), one per core on PostgreSQL. `BENCH_SERVE_WORKERS=N` overrides both.
WORKERS = {"sqlite": 1, "postgres": 2}


def serve_workers(engine_name: str) -> int:
    return int(os.environ.get("BENCH_SERVE_WORKERS") or WORKERS[engine_name])


class Server:
    """A running `collab-billing serve`: its URL and the CPU time its processes used."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.process = process

    def cpu_seconds(self) -> float:
        """User + system time of the server and its worker processes, so far."""
        pids = [self.process.pid, *_children(self.process.pid)]
        return sum(process_cpu_seconds(pid) for pid in pids)


def _children(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            children.extend(int(child) for child in text.split())
    return children


@contextlib.contextmanager
def serve(db: Database, workdir: Path, workers: int = 1, **env: str) -> Iterator[Server]:
    port = free_port()
    environment = service_env(
        db, env.pop("STRIPE_API_BASE", "http://127.0.0.1:9"), ADMIN_TOKEN=ADMIN_TOKEN, **env
    )
    log = open(workdir / f"serve-{port}.log", "w")  # noqa: SIM115
    command = [PYTHON, "-m", "collab_billing", "serve", "--port", str(port)]
    process = subprocess.Popen(
        command + (["--workers", str(workers)] if workers > 1 else []),
        env=environment,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url, timeout=60, path="/healthz")
        if workers > 1:
            _wait_for_workers(url, workers)
        yield Server(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_for_workers(url: str, workers: int, timeout: float = 60) -> None:
    """Until every worker answers (the first one up answers /healthz before the others)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scrape = httpx.get(f"{url}/metrics", timeout=5).text
        pids = {
            line.split('pid="', 1)[1].split('"', 1)[0]
            for line in scrape.splitlines()
            if line.startswith("collab_billing_reconciler_leader{")
        }
        if len(pids) >= workers:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{workers} workers did not start")


# -- webhooks -------------------------------------------------------------------------------------


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def bench_webhook(
    db: Database,
    emulator: EmulatorProcess,
    events: int,
    rate: float,
    workdir: Path,
    drain_events: int = 0,
) -> Result:
    """Signed `customer.subscription.updated` deliveries at a fixed rate (open loop, as Stripe
    sends them); latency is from sending to the answer, which comes after the row committed.
    With `drain_events`, a backlog of other customers' events is drained by
    `reconcile --once` in its own process meanwhile, writing to the same database."""
    customers = max(50, min(2_000, events))
    prepare_backlog(db, emulator, customers * 10)
    reconcile_once(db, emulator.url, workdir, STRIPE_REQUESTS_PER_SECOND="100000")
    subscriptions = emulator.control("GET", "state")["subscriptions"]
    if drain_events:
        _more_customers(db, emulator, first=customers + 1, count=drain_events // 10)
    base = int(emulator.control("GET", "clock")["now"]) + 1
    bodies = []
    statuses = {s["id"]: s["status"] for s in subscriptions}
    for i in range(events):
        sub = dict(subscriptions[i % len(subscriptions)])
        old = statuses[sub["id"]]
        sub["status"] = statuses[sub["id"]] = "past_due" if old == "active" else "active"
        event = {
            "id": f"evt_bench_{i:08d}",
            "object": "event",
            "api_version": "2026-08-26.dahlia",
            "created": base + int(i / rate),
            "type": "customer.subscription.updated",
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "data": {"object": sub, "previous_attributes": {"status": old}},
        }
        bodies.append(json.dumps(event).encode())
    workers = serve_workers(db.engine_name)
    with serve(
        db,
        workdir,
        workers=workers,
        STRIPE_API_BASE=emulator.url,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RECONCILE_ENABLED="false",
        # The emulator's clock was moved a week on (the backlog): its events are from then.
        WEBHOOK_EVENT_MAX_AHEAD_SECONDS=str(30 * 86_400),
    ) as server:
        drain = _start_drain(db, emulator, workdir) if drain_events else None
        cpu_before, own_before = server.cpu_seconds(), time.process_time()
        latencies, outcomes, elapsed = run_load(
            paced(server.port, events, rate, _delivery(bodies), _webhook_outcome)
        )
        server_cpu = server.cpu_seconds() - cpu_before
        own_cpu = time.process_time() - own_before
        drained_during = drain is not None and drain.poll() is None
        if drain is not None and drain.wait(timeout=3600) != 0:
            raise RuntimeError("reconcile --once failed during the webhook benchmark")
    extra = {"drain_events": drain_events, "drain_outlasted_deliveries": drained_during}
    return Result(
        "webhook-drain" if drain_events else "webhook",
        db.engine_name,
        events,
        {
            "p50_ms": round(1000 * percentile(latencies, 50), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1),
            "max_ms": round(1000 * max(latencies), 1),
            "rate_per_s": rate,
            "achieved_per_s": round(events / elapsed, 1),
            "outcomes": outcomes,
            "server_cpu_ms_per_event": round(1000 * server_cpu / events, 2),
            "generator_cpu_pct": round(100 * own_cpu / elapsed, 1),
            "workers": workers,
            "generator": GENERATOR_SHORT,
            **(extra if drain_events else {}),
        },
        f"{rate:.0f} signed deliveries/s, open loop, serve --workers {workers}; {GENERATOR}",
    )


def _more_customers(db: Database, emulator: EmulatorProcess, first: int, count: int) -> None:
    """Users `first..` and a backlog of their customers' events, newer than the cursor and
    older than the deliveries."""
    engine = db.engine()
    with engine.begin() as connection:
        numbers = range(first, first + count)
        users = [{"github_user_id": n, "github_login": f"user{n}"} for n in numbers]
        connection.execute(insert(User), users)
    engine.dispose()
    # The price first: its events would otherwise be the newest, and the emulator spreads a
    # backlog only after the newest event (all of it into one second, here).
    price = emulator.price()
    emulator.control("POST", "clock/advance", {"seconds": 8 * 86_400})
    emulator.generate(count, 10, price=price, first_github_user_id=first)


def _start_drain(db: Database, emulator: EmulatorProcess, workdir: Path) -> subprocess.Popen[bytes]:
    env = service_env(db, emulator.url, STRIPE_REQUESTS_PER_SECOND="100000")
    command = [PYTHON, "-m", "collab_billing", "reconcile", "--once"]
    log = open(os.environ.get("BENCH_DRAIN_LOG", os.devnull), "wb")  # noqa: SIM115
    return subprocess.Popen(command, env=env, cwd=workdir, stdout=log, stderr=log)


def _delivery(bodies: list[bytes]) -> Callable[[int], bytes]:
    """Delivery i, signed when it is sent."""

    def request(index: int) -> bytes:
        body = bodies[index]
        signature = sign(body, WEBHOOK_SECRET, int(time.time()))
        return (
            b"POST /stripe/webhooks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nStripe-Signature: " + signature.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )

    return request


def _webhook_outcome(status: int, answer: bytes) -> str:
    return str(json.loads(answer).get("outcome", "?")) if status == 200 else "error"


# -- admin API ------------------------------------------------------------------------------------


def bench_admin(
    db: Database, workdir: Path, seconds: float, concurrency: int, rate: float = 2_000
) -> list[Result]:
    """`GET /billing/subscriptions?github_user_id=N`, against `serve --workers` as recommended
    for the engine (`serve_workers`): from `concurrency` keep-alive connections for `seconds`
    (closed loop: the most it serves), then at `rate` requests/s for as long (open loop: the
    latency at the target's rate, queueing included)."""
    users = 1_000
    seed_users(db, users)
    engine = db.engine()
    with engine.begin() as connection:
        connection.execute(
            insert(BillingCustomer),
            [{"user_id": n, "stripe_customer_id": f"cus_bench_{n}"} for n in range(1, users + 1)],
        )
        connection.execute(
            insert(BillingSubscription),
            [
                {
                    "billing_customer_id": n,
                    "stripe_subscription_id": f"sub_bench_{n}",
                    "stripe_subscription_status": "active" if n % 3 else "canceled",
                    "stripe_cancel_at_period_end": False,
                    "stripe_state_as_of": 1,
                }
                for n in range(1, users + 1)
            ],
        )
    engine.dispose()
    workers = serve_workers(db.engine_name)
    with serve(db, workdir, workers=workers, RECONCILE_ENABLED="false") as server:
        check = httpx.get(
            f"{server.url}/billing/subscriptions?github_user_id=1",
            headers={"Authorization": ADMIN_TOKEN},
        )
        check.raise_for_status()
        request, outcome = _admin_request(users), _admin_outcome
        warm_up = closed_loop(server.port, min(0.5, seconds), concurrency, request, outcome)
        run_load(warm_up)
        cpu_before, own_before = server.cpu_seconds(), time.process_time()
        load = closed_loop(server.port, seconds, concurrency, request, outcome)
        latencies, outcomes, elapsed = run_load(load)
        server_cpu = server.cpu_seconds() - cpu_before
        own_cpu = time.process_time() - own_before
        count = max(1, int(rate * seconds))
        at_rate, paced_outcomes, paced_elapsed = run_load(
            paced(server.port, count, rate, request, outcome)
        )
    return [
        Result(
            "admin",
            db.engine_name,
            len(latencies),
            {
                "requests_per_s": round(len(latencies) / elapsed),
                "p50_ms": round(1000 * percentile(latencies, 50), 2),
                "p99_ms": round(1000 * percentile(latencies, 99), 2),
                "errors": len(latencies) - outcomes.get("ok", 0),
                "concurrency": concurrency,
                "workers": workers,
                "generator": GENERATOR_SHORT,
                "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, len(latencies)), 3),
                "generator_cpu_pct": round(100 * own_cpu / elapsed, 1),
            },
            f"{concurrency} connections, {seconds:g} s (closed loop), serve --workers {workers};"
            f" {GENERATOR}",
        ),
        Result(
            "admin-rate",
            db.engine_name,
            count,
            {
                "p50_ms": round(1000 * percentile(at_rate, 50), 2),
                "p99_ms": round(1000 * percentile(at_rate, 99), 2),
                "rate_per_s": rate,
                "achieved_per_s": round(count / paced_elapsed),
                "errors": count - paced_outcomes.get("ok", 0),
                "workers": workers,
                "generator": GENERATOR_SHORT,
            },
            f"{rate:g} requests/s for {seconds:g} s (open loop), serve --workers {workers};"
            f" {GENERATOR}",
        ),
    ]


def _admin_request(users: int) -> Callable[[int], bytes]:
    def request(index: int) -> bytes:
        return (
            f"GET /billing/subscriptions?github_user_id={index % users + 1} HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: {ADMIN_TOKEN}\r\n\r\n"
        ).encode()

    return request


def _admin_outcome(status: int, body: bytes) -> str:
    return "ok" if status == 200 and b"has_active_subscription" in body else "error"
