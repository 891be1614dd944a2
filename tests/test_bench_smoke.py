"""The benchmarks still run: each one at a tiny size, on the engine the suite runs on.

Benchmarks are not tests; this only keeps `python -m bench` working (a few seconds). The
figures themselves are in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import ab, common, packed_rows, stages
from bench.__main__ import ALL, main
from sqlalchemy.engine import make_url


def test_every_benchmark_runs_at_smoke_size(database_url: str, tmp_path: Path) -> None:
    engine = "postgres" if database_url.startswith("postgresql") else "sqlite"
    args = ["--smoke", "--engines", engine, "--json", str(tmp_path / "bench.json")]
    if engine == "postgres":
        # Each benchmark creates (and drops) a database of its own on the same server.
        server = make_url(database_url).set(database="postgres")
        args += ["--pg-url", server.render_as_string(hide_password=False)]
    assert main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    ran = {result["benchmark"] for result in report["results"]}
    assert ran == set(ALL) | {"admin-rate"}  # the admin benchmark's open-loop half
    by_name = {result["benchmark"]: result for result in report["results"]}
    assert by_name["apply"]["metrics"]["mismatches"] == 0
    # The machine's CPU while the drain ran: shares of the whole, from /proc/stat.
    assert 0 <= by_name["apply"]["metrics"]["machine_idle_pct"] <= 100
    assert 0 <= by_name["apply"]["metrics"]["machine_steal_pct"] <= 100
    # STRIPE_REQUESTS_PER_SECOND=100000 allows a walks' worker, but so short a walk starts none.
    assert by_name["apply"]["metrics"]["helpers_peak_rss_mb"] == 0
    assert by_name["apply"]["metrics"]["worker_pages"] == 0
    assert by_name["idle"]["metrics"]["requests_per_poll"] == 1
    assert by_name["webhook"]["metrics"]["outcomes"] == {"applied": 20}
    assert by_name["webhook-drain"]["metrics"]["outcomes"] == {"applied": 20}
    assert by_name["webhook-drain"]["metrics"]["drain_events"] == 2_000
    assert by_name["admin"]["metrics"]["errors"] == 0
    assert by_name["admin-rate"]["metrics"]["errors"] == 0
    assert by_name["admin-rate"]["size"] == 600  # 2,000 requests/s for the smoke's 0.3 s
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["python_loop_ms_at_start"] > 0
    assert report["machine"]["python_loop_ms_at_end"] > 0


@pytest.mark.parametrize("argv", [["--only", "nonsense"]])
def test_unknown_benchmark_is_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2


def test_ab_drains_one_backlog_per_version_and_times_statements(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    engine = "postgres" if database_url.startswith("postgresql") else "sqlite"
    args = [".", "--engine", engine, "--size", "300", "--repeats", "1", "--statements"]
    if engine == "postgres":
        server = make_url(database_url).set(database="postgres")
        args += ["--pg-url", server.render_as_string(hide_password=False)]
    monkeypatch.chdir(tmp_path)
    assert ab.main(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"run 1: +[\d,]+ events/s", printed)
    assert re.search(r"machine \d+% idle, \d+% stolen", printed), printed
    assert re.search(r"worker read 0 of [\d,]+ pages", printed), printed
    assert "median of 1" in printed
    assert re.search(r"^  \. +[\d,]+ +[\d,]+$", printed, re.MULTILINE), printed
    statements = json.loads((tmp_path / "ab---0.statements.json").read_text())
    by_text = {row["statement"]: row for row in statements}
    claims = [row for text, row in by_text.items() if "INTO processed_stripe_events" in text]
    assert claims and all(row["count"] >= 1 and row["seconds"] > 0 for row in claims)
    assert [row["seconds"] for row in statements] == sorted(
        (row["seconds"] for row in statements), reverse=True
    )


def test_ab_adjusts_each_run_by_the_emulators_cpu_in_it(capsys: Any) -> None:
    # A run at half the speed whose emulator took twice the CPU: the machine was slower, not
    # the version. Without /proc (CPU 0) there is nothing to adjust by.
    runs = {
        "A": [ab.Run(20_000, 1.0), ab.Run(10_000, 2.0)],
        "B": [ab.Run(15_000, 1.5)],
        "C": [ab.Run(12_000, 0.0)],
    }
    ab.print_medians("sqlite", 100, 2, runs)
    lines = capsys.readouterr().out.splitlines()
    assert "  A               15,000    13,333" in lines
    assert "  B               15,000    15,000" in lines
    assert "  C               12,000    12,000" in lines


def test_a_childs_own_processes_are_measured_beside_it(tmp_path: Path) -> None:
    """The peak RSS of what the measured process starts is added up apart from its own."""
    script = (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', "
        "'import time; block = bytearray(80 << 20); time.sleep(1)'], check=True)"
    )
    run = common.run_child([sys.executable, "-c", script], dict(os.environ), tmp_path, 60)
    assert run.returncode == 0
    assert run.helpers_peak_rss_mb >= 80
    assert run.peak_rss_mb < 80  # the parent's own, without its child's block


def test_machine_cpu_shares_are_of_the_time_between_two_readings() -> None:
    # user nice system idle iowait irq softirq steal, in ticks
    before = [100, 0, 50, 1000, 10, 0, 5, 0]
    after = [400, 160, 150, 1300, 30, 0, 25, 100]  # 1,000 ticks: 320 idle or iowait, 100 stolen
    assert common.cpu_shares(before, after) == {"idle_pct": 32.0, "steal_pct": 10.0}
    assert common.cpu_shares([], []) == {}  # no /proc: nothing to tell
    now = common.cpu_times()
    assert len(now) == 8 and all(ticks >= 0 for ticks in now)


def test_packed_rows_compares_both_reads_alone_and_beside_a_thread(capsys: Any) -> None:
    packed_rows.main(lookup_count=2)
    printed = capsys.readouterr().out
    for read in ("by_row", "packed"):
        for who in ("alone", "beside a thread running Python"):
            assert re.search(rf"{read} +{who} +[\d.]+ ms per 2,000 ids", printed), printed


def test_stages_times_each_stage_of_a_drain_and_checks_the_rows(
    database_url: str, capsys: Any
) -> None:
    engine = "postgres" if database_url.startswith("postgresql") else "sqlite"
    args = ["--engine", engine, "--size", "300"]
    if engine == "postgres":
        server = make_url(database_url).set(database="postgres")
        args += ["--pg-url", server.render_as_string(hide_password=False)]
    assert stages.main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("read", "prepare", "apply", "emulator"):
        assert re.search(rf"^{stage} +[\d.]+ µs of CPU per event", printed, re.M), printed
    assert re.search(r"^mismatches +0$", printed, re.M), printed
