"""`python -m bench`: run the benchmarks, print a table, write JSON.

    python -m bench                                  # everything, both engines, 10k and 100k
    python -m bench --sizes 10000,100000,1000000     # the published run
    python -m bench --only apply,limit --engines sqlite --sizes 10000
    python -m bench --smoke                          # tiny sizes: checks that it all still runs

PostgreSQL: `--pg-url postgresql://postgres@127.0.0.1:5432/postgres` (default, or
`BENCH_PG_URL`); each benchmark creates and drops a database of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench import drain, service
from bench.common import (
    DEFAULT_PG_URL,
    Database,
    Result,
    emulator,
    fresh_database,
    machine,
    python_loop_ms,
)

ALL = (
    "apply",
    "idle",
    "baseline",
    "limit",
    "ratelimit",
    "latency",
    "webhook",
    "webhook-drain",
    "admin",
)
SMOKE = {
    "sizes": [300],
    "baseline_size": 300,
    "ratelimit_events": 200,
    "latency_events": 300,
    "webhook_events": 20,
    "drain_events": 2_000,
    "admin_seconds": 0.3,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--engines", default="sqlite,postgres")
    parser.add_argument("--sizes", default="10000,100000", help="backlog sizes for apply/limit")
    parser.add_argument("--only", default=",".join(ALL), help=f"subset of {','.join(ALL)}")
    parser.add_argument("--baseline-size", type=int, default=10_000)
    parser.add_argument("--ratelimit-events", type=int, default=50_000)
    parser.add_argument("--latency-events", type=int, default=10_000)
    parser.add_argument(
        "--latency-ms", type=int, default=150, help="delay of each /v1/events answer (latency)"
    )
    parser.add_argument("--webhook-rate", type=float, default=100.0)
    parser.add_argument("--webhook-events", type=int, default=2_000)
    parser.add_argument(
        "--drain-events", type=int, default=20_000, help="backlog drained during webhook-drain"
    )
    parser.add_argument("--admin-seconds", type=float, default=10.0)
    parser.add_argument("--admin-concurrency", type=int, default=32)
    parser.add_argument(
        "--admin-rate", type=float, default=2_000.0, help="requests/s of admin-rate (open loop)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the state comparison")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
    )
    parser.add_argument("--json", default="bench-results.json", help="where to write results")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.smoke:
        sizes = SMOKE["sizes"]  # type: ignore[assignment]
        args.baseline_size = SMOKE["baseline_size"]
        args.ratelimit_events = SMOKE["ratelimit_events"]
        args.latency_events = SMOKE["latency_events"]
        args.webhook_events = SMOKE["webhook_events"]
        args.drain_events = SMOKE["drain_events"]
        args.admin_seconds = SMOKE["admin_seconds"]
    only = set(args.only.split(","))
    unknown = only - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    engines = [e for e in args.engines.split(",") if e]

    results: list[Result] = []
    started = time.time()
    speed_at_start = python_loop_ms()
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as tmp:
        workdir = Path(tmp)
        with emulator(workdir) as emu:
            for engine_name in engines:

                def fresh(engine_name: str = engine_name) -> Database:
                    return fresh_database(engine_name, workdir, args.pg_url)

                def run(step: Callable[[Database], list[Result]]) -> None:
                    db = fresh()
                    try:
                        for result in step(db):
                            results.append(result)
                            print(format_row(result), flush=True)
                    finally:
                        db.drop()

                for size in sizes:
                    if only & {"apply", "idle"}:
                        run(
                            lambda db, n=size: drain.bench_apply(
                                db, emu, n, workdir, verify=not args.no_verify
                            )
                        )
                    if "limit" in only:
                        run(lambda db, n=size: [drain.bench_limit(db, n)])
                if "baseline" in only:
                    run(lambda db: [drain.bench_baseline(db, emu, args.baseline_size)])
                if "ratelimit" in only:
                    for ties in (0,) if args.smoke else (0, drain.TIE_BURSTS):
                        run(
                            lambda db, ties=ties: [
                                service.bench_ratelimit(
                                    db, emu, args.ratelimit_events, workdir, tie_bursts=ties
                                )
                            ]
                        )
                if "latency" in only:
                    run(
                        lambda db: [
                            service.bench_latency(
                                db, emu, args.latency_events, workdir, args.latency_ms
                            )
                        ]
                    )
                if "webhook" in only:
                    run(
                        lambda db: [
                            service.bench_webhook(
                                db, emu, args.webhook_events, args.webhook_rate, workdir
                            )
                        ]
                    )
                if "webhook-drain" in only:
                    run(
                        lambda db: [
                            service.bench_webhook(
                                db,
                                emu,
                                args.webhook_events,
                                args.webhook_rate,
                                workdir,
                                drain_events=args.drain_events,
                            )
                        ]
                    )
                if "admin" in only:
                    run(
                        lambda db: service.bench_admin(
                            db, workdir, args.admin_seconds, args.admin_concurrency, args.admin_rate
                        )
                    )
    speed = {"python_loop_ms_at_start": speed_at_start, "python_loop_ms_at_end": python_loop_ms()}
    if not only & {"idle"}:
        results = [r for r in results if r.benchmark != "idle"]
    print()
    print(table(results))
    print(
        f"\npure-Python loop (machine speed, lower is faster): {speed_at_start} ms at the "
        f"start, {speed['python_loop_ms_at_end']} ms at the end"
    )
    report = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": machine() | speed,
        "argv": sys.argv[1:] if argv is None else argv,
        "results": [asdict(r) for r in results],
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


def format_row(result: Result) -> str:
    metrics = ", ".join(f"{k}={v}" for k, v in result.metrics.items() if v is not None)
    return f"{result.benchmark:<10} {result.engine:<9} {result.size:>9}  {metrics}"


COLUMNS = {
    "apply": ("events_per_s", "peak_rss_mb"),
    "baseline": ("events_per_s", ""),
    "limit": ("events_per_s", ""),
    "ratelimit": ("events_per_s", "ceiling_pct"),
    "latency": ("events_per_s", "vs_one_page_at_a_time_pct"),
    "idle": ("requests_per_poll", "poll_ms"),
    "webhook": ("p50_ms", "p99_ms"),
    "webhook-drain": ("p50_ms", "p99_ms"),
    "admin": ("requests_per_s", "p99_ms"),
    "admin-rate": ("p50_ms", "p99_ms"),
}


def table(results: list[Result]) -> str:
    """A Markdown table: one row per result; ratios for apply against the engine's baseline and
    against its limit at the same size (the largest limit size not above it)."""
    baseline: dict[str, float] = {}
    limits: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        speed = float(r.metrics.get("events_per_s", 0))
        if r.benchmark == "baseline":
            baseline.setdefault(r.engine, speed)
        elif r.benchmark == "limit":
            limits.setdefault(r.engine, []).append((r.size, speed))
    lines = [
        "| benchmark | engine | size | main figure | second figure | vs baseline | vs limit |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        first, second = COLUMNS[r.benchmark]
        main = f"{r.metrics.get(first)} {_unit(first)}"
        other = f"{r.metrics.get(second)} {_unit(second)}" if second else ""
        vs_base = vs_limit = ""
        if r.benchmark == "apply":
            speed = float(r.metrics["events_per_s"])
            if r.engine in baseline:
                vs_base = f"{speed / baseline[r.engine]:.1f}x"
            if r.engine in limits:
                sizes = sorted(limits[r.engine])
                limit = max((x for x in sizes if x[0] <= r.size), default=sizes[0])[1]
                vs_limit = f"{100 * speed / limit:.0f}%"
        cells = [r.benchmark, r.engine, f"{r.size:,}", main, other, vs_base, vs_limit]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _unit(metric: str) -> str:
    return {
        "events_per_s": "events/s",
        "peak_rss_mb": "MB peak RSS",
        "ceiling_pct": "% of ceiling",
        "vs_one_page_at_a_time_pct": "% of one page per latency",
        "requests_per_poll": "requests/poll",
        "poll_ms": "ms/poll",
        "p50_ms": "ms p50",
        "p99_ms": "ms p99",
        "requests_per_s": "req/s",
    }.get(metric, "")


if __name__ == "__main__":
    raise SystemExit(main())
