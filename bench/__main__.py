"""`python -m bench`: what users of the service feel, measured from outside it.

    python -m bench                                   # every benchmark at its full size
    python -m bench --only far,testmode               # some of them
    python -m bench --only apply --sizes 100000,1000000
    python -m bench --rev /work/other-checkout        # that checkout's service (its .venv)
    python -m bench --python /some/venv/bin/python    # the service of that Python
    python -m bench --smoke                           # tiny sizes: it all still runs

The service is driven only through its command line (`migrate`, `reconcile --once`, `serve`)
and HTTP, so any version of it can be measured; the emulator (this checkout's) counts the
Stripe requests. Benchmarks bound by Stripe (far, testmode, burst, ties) run on the first of
`--engines`; the others on each. PostgreSQL: `--pg-url` (or BENCH_PG_URL); each benchmark
creates and drops a database of its own. docs/benchmarks.md says what each one measures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import api, drains, notify, usage
from bench.drains import Result
from bench.harness import DEFAULT_PG_URL, Context, Emulator

ALL = (
    "far",
    "testmode",
    "burst",
    "ties",
    "apply",
    "first-sync",
    "webhook",
    "admin",
    "usage",
    "sync",
    "state",
    "notify",
)
SMOKE = {
    "far_events": 300, "latencies": "150", "testmode_events": 300, "testmode_ties": 3,
    "burst_events": 400, "ties_events": 300, "sizes": "300", "webhooks": 20,
    "first_sync_customers": 300, "drain_events": 2_000, "admin_seconds": 0.3,
    "usage_records": 3_000, "usage_backlog": 400, "usage_once_records": 200, "usage_kills": 1,
    "syncs": 20, "state_seconds": 0.3, "notify_changes": 50,
}  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    add = p.add_argument
    add("--only", default=",".join(ALL), help=f"some of {','.join(ALL)}")
    add("--engines", default="sqlite,postgres")
    add("--pg-url", default=DEFAULT_PG_URL)
    add("--rev", help="a checkout whose .venv runs the service under test")
    add("--python", help="the Python that runs the service under test")
    add("--serve-args", default="", help='more arguments of serve, e.g. "--workers 2"')
    add("--far-events", type=int, default=100_000)
    add("--latencies", default="150,300", help="far: ms added to every Stripe answer")
    add("--testmode-events", type=int, default=100_000)
    add("--testmode-ties", type=int, default=150)
    add("--burst-events", type=int, default=20_000)
    add("--first-sync-customers", type=int, default=30_000)
    add("--burst-fault-rate", type=float, default=0.2)
    add("--ties-events", type=int, default=20_000)
    add("--sizes", default="100000", help="apply: backlog sizes")
    add("--webhooks", type=int, default=1_000)
    add("--webhook-rate", type=float, default=100.0)
    add("--drain-events", type=int, default=200_000, help="webhook: drained meanwhile")
    add("--admin-seconds", type=float, default=5.0)
    add("--admin-rate", type=float, default=1_000.0)
    add("--admin-concurrency", type=int, default=32)
    add("--usage-records", type=int, default=100_000, help="usage: records ingested")
    add("--usage-backlog", type=int, default=100_000, help="usage: the sender's backlog")
    add("--usage-rate", type=float, default=200.0, help="usage: the sender's requests/s")
    add("--usage-once-records", type=int, default=20_000)
    add("--usage-kills", type=int, default=10)
    add("--syncs", type=int, default=300, help="sync: requests, paced at --sync-rate")
    add("--sync-rate", type=float, default=10.0)
    add("--state-seconds", type=float, default=10.0)
    add("--state-rate", type=float, default=500.0)
    add("--notify-changes", type=int, default=2_000)
    add("--notify-rate", type=float, default=100.0)
    add("--timeout", type=float, default=900, help="seconds a drain may take")
    add("--no-verify", action="store_true", help="apply: skip comparing rows to the emulator")
    add("--smoke", action="store_true", help="tiny sizes, a few seconds each")
    add("--json", default="bench-results.json")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    unknown = set(args.only.split(",")) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    return args


def service_python(args: argparse.Namespace) -> str:
    if args.python:
        return str(args.python)
    if args.rev:
        return str(Path(args.rev).resolve() / ".venv" / "bin" / "python")
    return sys.executable


def plan(args: argparse.Namespace, ctx: Context) -> list[Callable[[], list[Result]]]:
    """The runs asked for, in order; each returns its results."""
    only, engines = args.only.split(","), args.engines.split(",")
    first, serve_args, timeout = engines[0], args.serve_args.split(), args.timeout
    verify = not args.no_verify
    runs: list[Callable[[], list[Result]]] = []
    if "far" in only:
        for ms in (int(v) for v in args.latencies.split(",")):
            runs.append(lambda ms=ms: [drains.far(ctx, first, args.far_events, ms, timeout)])
    if "testmode" in only:
        for ties in (0, args.testmode_ties):
            runs.append(
                lambda t=ties: [drains.testmode(ctx, first, args.testmode_events, t, timeout)]
            )
    if "burst" in only:
        for rate in (0.0, args.burst_fault_rate):
            runs.append(lambda r=rate: [drains.burst(ctx, first, args.burst_events, r, timeout)])
    if "ties" in only:
        runs.append(lambda: [drains.ties(ctx, first, args.ties_events, timeout)])
    if "sync" in only:
        runs.append(lambda: [api.sync(ctx, first, args.syncs, args.sync_rate, 150, serve_args)])
    for engine in engines:
        if "first-sync" in only:
            n = args.first_sync_customers
            runs.append(lambda e=engine, n=n: [drains.first_sync(ctx, e, n, timeout)])
        if "apply" in only:
            for size in (int(v) for v in args.sizes.split(",")):
                runs.append(lambda e=engine, n=size: [drains.apply(ctx, e, n, verify, timeout)])
        if "webhook" in only:
            for drain in (0, args.drain_events):
                runs.append(
                    lambda e=engine, d=drain: [
                        api.webhook(ctx, e, args.webhooks, args.webhook_rate, d, serve_args)
                    ]
                )
        if "admin" in only:
            runs.append(
                lambda e=engine: api.admin(
                    ctx, e, args.admin_seconds, args.admin_rate, args.admin_concurrency, serve_args
                )
            )
        if "state" in only:
            runs.append(
                lambda e=engine: notify.state(
                    ctx, e, args.state_seconds, args.state_rate, serve_args
                )
            )
        if "notify" in only:
            runs.append(
                lambda e=engine: notify.notify(
                    ctx, e, args.notify_changes, args.notify_rate, serve_args
                )
            )
    if "usage" in only:
        runs.append(lambda: [usage.sender(ctx, first, args.usage_backlog, args.usage_rate)])
        runs.append(
            lambda: [
                usage.exactly_once(
                    ctx, first, args.usage_once_records, args.usage_rate, args.usage_kills, 0.2
                )
            ]
        )
        for engine in engines:
            runs.append(lambda e=engine: [usage.ingest(ctx, e, args.usage_records)])
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    python = service_python(args)
    started, speed = time.time(), python_loop_ms()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="collab-bench-") as tmp:
        emulator = Emulator(Path(tmp))
        try:
            ctx = Context(python, Path(tmp), emulator, args.pg_url)
            for run in plan(args, ctx):
                for result in run():
                    results.append(result)
                    print(row(result), flush=True)
        finally:
            emulator.close()
    report = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "service": {"python": python, "commit": commit_of(python)},
        "machine": machine() | {"python_loop_ms": [speed, python_loop_ms()]},
        "argv": sys.argv[1:] if argv is None else argv,
        "results": [asdict(r) for r in results],
    }
    Path(args.json).write_text(to_json(report))
    missed = [
        f"{r.benchmark}/{r.engine}: {t}" for r in results for t, ok in r.targets.items() if not ok
    ]
    print(f"\n{len(missed)} target(s) missed" + "".join(f"\n  {m}" for m in missed))
    print(f"wrote {args.json}")
    return 0


def to_json(report: dict[str, Any]) -> str:
    """Indented, but one line per result: short to read and to compare."""
    lines = [f"  {json.dumps(r)}" for r in report.pop("results")]
    head = json.dumps(report, indent=1)[:-2]
    return head + ',\n "results": [\n' + ",\n".join(lines) + "\n ]\n}\n"


MAIN_FIGURES = (
    "events_per_s", "ceiling_pct", "requests", "rereads", "max_in_flight", "requests_per_s",
    "p50_ms", "p99_ms", "total_peak_rss_mb", "seconds", "exit_code", "records_per_s",
    "sent_per_s", "pct_of_rate", "mismatched_customers", "identifiers_sent_twice",
)  # fmt: skip


def row(result: Result) -> str:
    figures = ", ".join(f"{k}={result.metrics[k]}" for k in MAIN_FIGURES if k in result.metrics)
    missed = [t for t, ok in result.targets.items() if not ok]
    verdict = "ok" if not missed else "MISSED: " + "; ".join(missed)
    return f"{result.benchmark:<14} {result.engine:<8} {result.size:>9,}  {figures}  [{verdict}]"


def commit_of(python: str) -> str | None:
    """The commit of the checkout whose service `python` runs (None if not a git checkout)."""
    code = "import collab_billing, pathlib; print(pathlib.Path(collab_billing.__file__).parent)"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, env=_no_path())
    where = found.stdout.strip() or "."
    head = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() or None


def _no_path() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "cpu": _cpu_model()}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")


def python_loop_ms() -> float:
    """Milliseconds for a fixed pure-Python loop, best of 3: how fast the machine runs Python
    now (it drifts 20-60% within an hour; figures compare only as far as this does)."""

    def loop() -> int:
        return sum(range(1_000_000))

    return round(min(timeit.repeat(loop, number=1, repeat=3)) * 1000, 1)


if __name__ == "__main__":
    raise SystemExit(main())
