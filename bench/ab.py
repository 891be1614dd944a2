"""`python -m bench.ab`: one backlog drained by several versions of the service, alternated.

    python -m bench.ab --engine sqlite --size 1000000 --repeats 3 HEAD .

Each version is a git revision (its `src/` exported to a temporary folder), `.` (this
checkout's `src/`) or a folder holding a `src/` (a copy of work in progress). The backlog is
generated once; every run drains a copy of the same database (a file copy on SQLite,
`CREATE DATABASE ... TEMPLATE` on PostgreSQL) with `reconcile --once`, versions taking turns
so that the machine's drift (seen at 20-60% within an hour here) falls on all of them alike.
Prints each run (events/s, peak RSS, CPU seconds) and the median per version. `--profile`
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
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.common import (
    DEFAULT_PG_URL,
    PYTHON,
    REPO,
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
        speeds: dict[str, list[int]] = {v: [] for v in args.versions}
        with emulator(workdir) as emu:
            template = fresh_database(args.engine, workdir, args.pg_url)
            try:
                events = int(prepare_backlog(template, emu, args.size)["events"])
                for repeat in range(args.repeats):
                    for version, source in sources.items():
                        spy = args.spy_args.split() if args.profile else None
                        out = Path.cwd() / f"ab-{slug(version)}-{repeat}.folded"
                        emulator_cpu = emu.cpu_seconds()
                        seconds, rss, cpu = drain_copy(
                            template, emu.url, workdir, args, source, spy, out
                        )
                        speeds[version].append(round(events / seconds))
                        emulator_cpu = emu.cpu_seconds() - emulator_cpu
                        print(
                            f"{version:<12} run {repeat + 1}: {speeds[version][-1]:>7,} "
                            f"events/s, peak RSS {rss:.0f} MB, CPU {cpu:.1f} s "
                            f"(emulator {emulator_cpu:.1f} s)",
                            flush=True,
                        )
                        if args.statements:
                            print_statements(out.with_suffix(".statements.json"))
            finally:
                template.drop()
    print(f"\n{args.engine}, {events:,} events, median of {args.repeats}:")
    for version, values in speeds.items():
        print(f"  {version:<12} {statistics.median(values):>9,.0f} events/s")
    return 0


def drain_copy(
    template: Database,
    emulator_url: str,
    workdir: Path,
    args: argparse.Namespace,
    source: Path,
    spy: list[str] | None,
    profile: Path,
) -> tuple[float, float, float]:
    """`reconcile --once` of `source` on a copy of `template`: drain seconds, peak RSS (MB),
    CPU seconds of the whole process (start-up included)."""
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
        return float(polls[-1]["seconds"]), run.peak_rss_mb, run.cpu_seconds
    finally:
        copy.drop()


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
