"""Usage billing: ingest (`POST /billing/usage`, batches of 1,000, answered once durable), the
sender's rate on a backlog, exactly-once at Stripe under faults and SIGKILL. The sender runs
alone (`usage --send`), the emulator rate-limiting meter events at the configured rate."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import defaultdict
from decimal import Decimal
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from bench.drains import Result, checked
from bench.harness import ADMIN_TOKEN, Context, Database, database, run_measured, serve, service_env

USERS = 1_000
BATCH = 1_000
CLIENTS = 4  # concurrent ingest clients
METER = "bench_tokens"
QUERY = (
    "SELECT c.stripe_customer_id, e.value, e.identifier, e.status FROM billing_usage_events e "
    "JOIN billing_customers c ON c.user_id = e.user_id"
)


def setup(ctx: Context, db: Database) -> None:
    """Users 1..1,000 and a meter (which `resync` copies)."""
    ctx.emulator.control("DELETE", "state")
    ctx.emulator.api(
        "POST", "/v1/billing/meters",
        {"display_name": "Tokens", "event_name": METER, "default_aggregation[formula]": "sum"},
    )  # fmt: skip
    db.add_users(1, USERS)
    checked(run_measured(ctx, ctx.command("resync"), service_env(ctx, db), 600))


def batches(records: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = int(time.time())
    events = [
        {"github_user_id": rng.randint(1, USERS), "meter": METER, "value": rng.randint(1, 50),
         "idempotency_key": f"k{i}", "timestamp": now - rng.randint(0, 3600)}
        for i in range(records)
    ]  # fmt: skip
    return [{"events": events[i : i + BATCH]} for i in range(0, records, BATCH)]


def post_all(port: int, bodies: list[dict[str, Any]]) -> float:
    """Send every batch with `CLIENTS` clients; returns the seconds it took."""
    work = list(reversed(bodies))
    lock = threading.Lock()
    failures: list[str] = []

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          headers={"Authorization": ADMIN_TOKEN}) as http:  # fmt: skip
            while True:
                with lock:
                    if not work:
                        return
                    body = work.pop()
                answer = http.post("/billing/usage", json=body)
                if answer.status_code != 202 or answer.json()["accepted"] != len(body["events"]):
                    failures.append(answer.text[:200])

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"ingest failed: {failures[0]}")
    return time.monotonic() - started


def ingest(ctx: Context, engine: str, records: int) -> Result:
    target = 5_000 if engine == "postgres" else 10_000
    with database(ctx, engine) as db:
        setup(ctx, db)
        with serve(ctx, db, []) as port:
            seconds = post_all(port, batches(records))
        stored = db.scalar("SELECT count(*) FROM billing_usage_events")
    rate = round(stored / seconds)
    metrics = {"records": records, "stored": stored, "seconds": round(seconds, 2),
               "records_per_s": rate, "clients": CLIENTS}  # fmt: skip
    return Result("usage-ingest", engine, records, metrics,
                  {f">= {target:,} records/s": rate >= target})  # fmt: skip


def sender_command(ctx: Context, db: Database, rate: float) -> tuple[list[str], dict[str, str]]:
    env = service_env(ctx, db, BILLING_USAGE_REQUESTS_PER_SECOND=str(rate),
                      STRIPE_MAX_NETWORK_RETRIES="0")  # fmt: skip
    return ctx.command("usage", "--send"), env


def pending(db: Database, status: str = "pending") -> int:
    return db.scalar(f"SELECT count(*) FROM billing_usage_events WHERE status = '{status}'")


def sender(ctx: Context, engine: str, records: int, rate: float) -> Result:
    """The sender draining a backlog, Stripe (the emulator) limited to `rate` requests/s."""
    with database(ctx, engine) as db:
        setup(ctx, db)
        with serve(ctx, db, []) as port:
            post_all(port, batches(records))
        limit = {"requests_per_second": rate, "path_prefix": "/v1/billing/meter_events"}
        ctx.emulator.control("POST", "rate_limit", limit)
        command, env = sender_command(ctx, db, rate)
        ctx.emulator.control("DELETE", "requests")
        process = subprocess.Popen(command, env=env, cwd=ctx.workdir, stderr=subprocess.DEVNULL)
        # Timed from the first record sent (start-up and customer creation excluded).
        while pending(db, "sent") == 0:
            time.sleep(0.05)
        started, first = time.monotonic(), records - pending(db)
        while pending(db):
            time.sleep(0.2)
        seconds = time.monotonic() - started
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        counts = ctx.emulator.requests()
        ctx.emulator.control("DELETE", "rate_limit")
    sent_per_s = (records - first) / seconds
    metrics = {"records": records, "rate": rate, "seconds": round(seconds, 1),
               "sent_per_s": round(sent_per_s, 1), "pct_of_rate": round(100 * sent_per_s / rate, 1),
               "requests": counts["total"],
               "error_answers": counts["total"] - counts["by_status"].get("200", 0)}  # fmt: skip
    return Result("usage-sender", engine, records, metrics,
                  {">= 95% of the rate": sent_per_s >= 0.95 * rate})  # fmt: skip


def exactly_once(
    ctx: Context, engine: str, records: int, rate: float, kills: int, fault_rate: float
) -> Result:
    """20% faults on meter events and the sender SIGKILLed `kills` times mid-backlog: Stripe's
    summaries equal the accepted sums per customer, and no record is sent twice."""
    with database(ctx, engine) as db:
        setup(ctx, db)
        with serve(ctx, db, []) as port:
            post_all(port, batches(records))
        ctx.emulator.control(
            "POST",
            "faults",
            {"rate": fault_rate, "statuses": [500, 429], "path_prefix": "/v1/billing/meter_events"},
        )
        command, env = sender_command(ctx, db, rate)
        rng, started = random.Random(11), time.monotonic()
        expected = records / rate
        for _ in range(kills):
            process = subprocess.Popen(command, env=env, cwd=ctx.workdir, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.5, 1.5) * expected / (kills + 1) + 1.5)  # start-up ~1.5 s
            process.send_signal(signal.SIGKILL)
            process.wait()
        left_after_kills = pending(db)
        process = subprocess.Popen(command, env=env, cwd=ctx.workdir, stderr=subprocess.DEVNULL)
        while pending(db):
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        seconds = time.monotonic() - started
        ctx.emulator.control("DELETE", "faults")
        mismatches, repeats, failed = verify(ctx, db)
    metrics = {"records": records, "kills": kills, "fault_rate": fault_rate,
               "pending_after_kills": left_after_kills, "seconds": round(seconds, 1),
               "mismatched_customers": mismatches, "identifiers_sent_twice": repeats,
               "failed": failed}  # fmt: skip
    ok = mismatches == 0 and repeats == 0 and failed == 0
    return Result("usage-once", engine, records, metrics, {"exactly once": ok})


def verify(ctx: Context, db: Database) -> tuple[int, int, int]:
    """(customers whose summary differs from our sum, identifiers twice or not ours, failed)"""
    engine = create_engine(db.url)
    with engine.connect() as connection:
        rows = connection.execute(text(QUERY)).all()
    engine.dispose()
    ours: dict[str, Decimal] = defaultdict(Decimal)
    for customer, value, _, _ in rows:
        ours[customer] += Decimal(str(value))
    state = ctx.emulator.control("GET", "state?events=true")
    sent = [event["identifier"] for event in state["meter_events"]]
    repeats = len(sent) - len(set(sent)) + len(set(sent) ^ {row[2] for row in rows})
    meter = state["meters"][0]["id"]
    now = state["now"]
    window = f"start_time={(now - 35 * 86_400) // 60 * 60}&end_time={now // 60 * 60 + 120}"
    mismatches = 0
    for customer, total in ours.items():
        page = ctx.emulator.api(
            "GET", f"/v1/billing/meters/{meter}/event_summaries?customer={customer}&{window}"
        )
        summed = Decimal(str(sum(s["aggregated_value"] for s in page["data"])))
        mismatches += summed != total
    return mismatches, repeats, sum(1 for row in rows if row[3] == "failed")
