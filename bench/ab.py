"""`python -m bench.ab`: one backlog drained by several versions of the service, alternated.

    python -m bench.ab --engine sqlite --size 1000000 --repeats 3 HEAD .

Each version is a git revision (its `src/` exported to a temporary folder), `.` (this
checkout's `src/`) or a folder holding a `src/` (a copy of work in progress). The backlog is
generated once; every run drains a copy of the same database (a file copy on SQLite,
`CREATE DATABASE ... TEMPLATE` on PostgreSQL) with `reconcile --once`, versions taking turns
so that the machine's drift (seen at 20-60% within an hour here) falls on all of them alike.
Prints each run (events/s, peak RSS, CPU seconds, and how much of the machine's CPU sat idle
or was stolen by the hypervisor meanwhile) and the median per version, raw and
`adjusted`: each run's events/s times the emulator's CPU seconds in that run over their median
in all runs. The emulator answers the same requests every run, so its CPU time measures the
machine's speed during the run (for one version run 8 times at 100k on PostgreSQL, raw
15,420-24,557 events/s, adjusted 17,100-18,900). It holds only for versions that talk to the
emulator alike: one that changes how it sends requests changes the emulator's CPU too (step
45, which sends the next request ahead, made the emulator's CPU ~7% lower at 10k). `--profile`
wraps each run in py-spy (installed separately) and keeps its samples as folded stacks, one
line per stack and thread (`ab-VERSION-RUN.folded`; speedscope and flamegraph.pl read them).
`--statements` times every SQL statement of each run (`bench.statement_times`), prints the
five costliest and keeps them all in `ab-VERSION-RUN.statements.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench.common import (
    DEFAULT_PG_URL,
    PYTHON,
    REPO,
    ChildRun,
    Database,
    emulator,
    fresh_database,
    run_child,
    service_env,
)
from bench.drain import prepare_backlog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument(
        "versions", nargs="+", help="git revisions, . for this checkout, or folders with a src/"
    )
    parser.add_argument("--engine", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy folded stacks per run")
    parser.add_argument(
        "--statements",
        action="store_true",
        help="time every SQL statement of each run (bench.statement_times) and print the top 5",
    )
    parser.add_argument(
        "--spy-args", default="", help='more py-spy options, e.g. "--gil" or "--idle"'
    )
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collab-ab-") as tmp:
        workdir = Path(tmp)
        sources = {v: export_source(v, workdir) for v in args.versions}
        runs: dict[str, list[Run]] = {v: [] for v in args.versions}
        with emulator(workdir) as emu:
            template = fresh_database(args.engine, workdir, args.pg_url)
            try:
                events = int(prepare_backlog(template, emu, args.size)["events"])
                for repeat in range(args.repeats):
                    for version, source in sources.items():
                        spy = args.spy_args.split() if args.profile else None
                        out = Path.cwd() / f"ab-{slug(version)}-{repeat}.folded"
                        emulator_cpu = emu.cpu_seconds()
                        seconds, child, poll = drain_copy(
                            template, emu.url, workdir, args, source, spy, out
                        )
                        emulator_cpu = emu.cpu_seconds() - emulator_cpu
                        run = Run(round(events / seconds), emulator_cpu)
                        runs[version].append(run)
                        print(
                            f"{version:<12} run {repeat + 1}: {run.events_per_s:>7,} "
                            f"events/s, peak RSS {child.peak_rss_mb:.0f} MB"
                            f"{helpers_note(child.helpers_peak_rss_mb)}, "
                            f"CPU {child.cpu_seconds:.1f} s (emulator {emulator_cpu:.2f} s)"
                            f"{machine_note(child.machine_cpu)}{worker_note(poll)}",
                            flush=True,
                        )
                        if args.statements:
                            print_statements(out.with_suffix(".statements.json"))
            finally:
                template.drop()
    print_medians(args.engine, events, args.repeats, runs)
    return 0


@dataclass(frozen=True)
class Run:
    events_per_s: int
    emulator_cpu_s: float


def print_medians(engine: str, events: int, repeats: int, runs: dict[str, list[Run]]) -> None:
    """The median events/s of each version, raw and adjusted for the machine's speed in each
    run: the emulator answers the same requests in every run, so its CPU time tells how fast
    the machine ran meanwhile (see the module's docstring for when that holds)."""
    # Without /proc the emulator's CPU reads 0: such a run is left as it is.
    measured = [run.emulator_cpu_s for rs in runs.values() for run in rs if run.emulator_cpu_s]
    reference = statistics.median(measured) if measured else 1.0
    print(f"\n{engine}, {events:,} events, median of {repeats}:")
    print(f"  {'':<12} {'events/s':>9} {'adjusted':>9}")
    for version, version_runs in runs.items():
        raw = statistics.median(run.events_per_s for run in version_runs)
        adjusted = statistics.median(
            run.events_per_s * (run.emulator_cpu_s or reference) / reference for run in version_runs
        )
        print(f"  {version:<12} {raw:>9,.0f} {adjusted:>9,.0f}")


def drain_copy(
    template: Database,
    emulator_url: str,
    workdir: Path,
    args: argparse.Namespace,
    source: Path,
    spy: list[str] | None,
    profile: Path,
) -> tuple[float, ChildRun, dict[str, Any]]:
    """`reconcile --once` of `source` on a copy of `template`: the drain's seconds, the
    process's run (its peak RSS, and CPU seconds with start-up included) and its poll log."""
    copy = copy_database(template, workdir, args.pg_url)
    try:
        env = service_env(copy, emulator_url, STRIPE_REQUESTS_PER_SECOND="100000")
        env["PYTHONPATH"] = str(source)
        command = [PYTHON, "-m", "collab_billing", "reconcile", "--once"]
        if args.statements:
            env["PYTHONPATH"] += os.pathsep + str(REPO)  # for bench.statement_times
            timed = str(profile.with_suffix(".statements.json"))
            command = [PYTHON, "-m", "bench.statement_times", timed, *command[2:]]
        if spy is not None:
            record = ["py-spy", "record", "--format", "raw", "--threads", *spy]
            command = [*record, "-o", str(profile), "--", *command]
        run = run_child(command, env, workdir, timeout=3600)
        polls = [r for r in run.log_lines if r.get("message") == "poll"]
        if run.returncode != 0 or not polls:
            raise RuntimeError(f"{source}: {run.stderr_tail}")
        return float(polls[-1]["seconds"]), run, polls[-1]
    finally:
        copy.drop()


def machine_note(shares: dict[str, float]) -> str:
    """The machine's idle and stolen CPU while the run's process ran, when /proc tells."""
    if not shares:
        return ""
    return f", machine {shares['idle_pct']:.0f}% idle, {shares['steal_pct']:.0f}% stolen"


def helpers_note(peak_mb: float) -> str:
    """The peak RSS of the processes the run started (the walks' worker), when there were any."""
    return f" (+{peak_mb:.0f} MB in its helper processes)" if peak_mb else ""


def worker_note(poll: dict[str, Any]) -> str:
    """How many of the drain's pages the walks' worker process read, where it tells."""
    if "worker_pages" not in poll:
        return ""
    return f", worker read {poll['worker_pages']:,} of {poll['requests']:,} pages"


def print_statements(path: Path, top: int = 5) -> None:
    for row in json.loads(path.read_text())[:top]:
        print(f"    {row['seconds']:8.2f} s {row['count']:>7,}x  {row['statement'][:90]}")


def export_source(version: str, workdir: Path) -> Path:
    """The folder to put on PYTHONPATH for `version`."""
    if version == ".":
        return REPO / "src"
    if (Path(version) / "src").is_dir():  # a copy of a checkout
        return Path(version) / "src"
    target = workdir / slug(version)
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", version, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target / "src"


def copy_database(template: Database, workdir: Path, pg_url: str) -> Database:
    if template.engine_name == "sqlite":
        source = Path(template.url.removeprefix("sqlite:///"))
        copy = fresh_database("sqlite", workdir, pg_url)
        shutil.copyfile(source, copy.url.removeprefix("sqlite:///"))
        return copy
    name = f"collab_billing_ab_{uuid.uuid4().hex[:10]}"
    template_name = template.url.rsplit("/", 1)[1]
    admin_url = template.url.rsplit("/", 1)[0] + "/postgres"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name} TEMPLATE {template_name}"))
    admin.dispose()

    def drop() -> None:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()

    return Database(f"{admin_url.rsplit('/', 1)[0]}/{name}", "postgres", drop)


def slug(version: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in version) or "here"


if __name__ == "__main__":
    raise SystemExit(main())
