"""The benchmarks still run: each at a tiny size, on the engine the suite runs on.

Benchmarks are not tests; this only keeps `python -m bench` working (about a minute).
What they measure and their targets are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from bench import harness
from bench.__main__ import main
from sqlalchemy.engine import make_url

# Each benchmark runs in one of the two suites, as CI runs them at once: those whose database
# matters on SQLite, those that Stripe's pace limits on PostgreSQL, and `apply` on both (the
# harness makes a database of its own on each engine).
SQLITE_RUNS = "apply,first-sync,webhook,admin,state,notify,usage"
POSTGRES_RUNS = "apply,far,testmode,burst,ties,sync"
DRAINS = ("far-150ms", "testmode", "testmode-ties", "burst", "ties")


def test_every_benchmark_runs_at_smoke_size(database_url: str, tmp_path: Path) -> None:
    engine = "postgres" if database_url.startswith("postgresql") else "sqlite"
    args = ["--smoke", "--engines", engine, "--json", str(tmp_path / "bench.json")]
    if engine == "postgres":
        server = make_url(database_url).set(database="postgres")
        args += ["--pg-url", server.render_as_string(hide_password=False), "--only", POSTGRES_RUNS]
    else:
        args += ["--only", SQLITE_RUNS]
    assert main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    results = {r["benchmark"]: r for r in report["results"]}
    assert results["apply"]["metrics"]["peak_rss_mb"] > 10
    assert report["service"]["python"] == sys.executable
    if engine == "postgres":
        assert set(results) == {"apply", *DRAINS, "burst-faults", "sync"}
        for name in ("apply", *DRAINS):
            metrics = results[name]["metrics"]
            assert all(ok for t, ok in results[name]["targets"].items() if t.startswith("complete"))
            assert metrics["applied"] == metrics["events"] > 0, name
            assert metrics["mismatches"] == 0, name
            assert metrics["event_pages"] >= 1 and metrics["max_in_flight"] >= 1, name
        assert results["testmode-ties"]["metrics"]["rereads"] >= 1  # counted by the emulator
        assert results["ties"]["metrics"]["tied_pct"] > 10
        assert results["sync"]["targets"]["all answered 200"]
        assert results["sync"]["metrics"]["stripe_requests"] >= 2 * results["sync"]["size"]
        return
    assert set(results) == {
        "apply", "first-sync", "webhook", "webhook-drain", "admin", "admin-paced",
        "usage-sender", "usage-once", "usage-ingest", "state", "notify",
    }  # fmt: skip
    metrics = results["apply"]["metrics"]
    assert metrics["applied"] == metrics["events"] > 0 and metrics["mismatches"] == 0
    assert results["first-sync"]["targets"] == {"complete": True}
    assert results["webhook"]["targets"]["all answered 200"]
    assert results["admin"]["metrics"]["errors"] == results["admin-paced"]["metrics"]["errors"] == 0
    assert results["usage-once"]["targets"] == {"exactly once": True}
    assert results["usage-ingest"]["metrics"]["stored"] == results["usage-ingest"]["size"]
    assert results["state"]["metrics"]["errors"] == 0
    assert results["notify"]["targets"]["every change delivered"]


def test_unknown_benchmark_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "nonsense"])
    assert exit_info.value.code == 2


def test_a_childs_own_processes_are_measured_beside_it(tmp_path: Path) -> None:
    """The peak RSS of what the measured process starts is added up apart from its own."""
    script = (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', "
        "'import time; block = bytearray(80 << 20); time.sleep(1)'], check=True)"
    )
    ctx = harness.Context(sys.executable, tmp_path, None, "")  # type: ignore[arg-type]
    run = harness.run_measured(ctx, [sys.executable, "-c", script], dict(os.environ), 60)
    assert run.returncode == 0
    assert run.children_peak_rss_mb >= 80 and len(run.children) == 1
    assert run.peak_rss_mb < 80  # the parent's own, without its child's block
