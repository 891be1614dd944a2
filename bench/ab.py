"""`python -m bench.ab`: one backlog drained by several versions of the service, alternated.

    python -m bench.ab --engine sqlite --size 1000000 --repeats 3 HEAD .

Each version is a git revision (its `src/` exported to a temporary folder) or `.` (this
checkout's `src/`). The backlog is generated once; every run drains a copy of the same
database (a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on PostgreSQL) with
`reconcile --once`, versions taking turns so that the machine's drift (seen at 20-60% within
an hour here) falls on all of them alike. Prints each run and the median per version.
`--profile` wraps each run in py-spy (installed separately) and keeps its flame graph.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.common import PYTHON, REPO, Database, emulator, fresh_database, run_child, service_env
from bench.drain import prepare_backlog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("versions", nargs="+", help="git revisions, or . for this checkout")
    parser.add_argument("--engine", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy flame graph per run")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
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
                        copy = copy_database(template, workdir, args.pg_url)
                        try:
                            env = service_env(copy, emu.url, STRIPE_REQUESTS_PER_SECOND="100000")
                            env["PYTHONPATH"] = str(source)
                            command = [PYTHON, "-m", "collab_billing", "reconcile", "--once"]
                            if args.profile:
                                svg = Path.cwd() / f"ab-{slug(version)}-{repeat}.svg"
                                command = ["py-spy", "record", "-o", str(svg), "--", *command]
                            run = run_child(command, env, workdir, timeout=3600)
                            if run.returncode != 0:
                                raise RuntimeError(f"{version}: {run.stderr_tail}")
                            polls = [r for r in run.log_lines if r.get("message") == "poll"]
                            speed = round(events / float(polls[-1]["seconds"]))
                            speeds[version].append(speed)
                            print(
                                f"{version:<12} run {repeat + 1}: {speed:>7,} events/s, "
                                f"peak RSS {run.peak_rss_mb:.0f} MB",
                                flush=True,
                            )
                        finally:
                            copy.drop()
            finally:
                template.drop()
    print(f"\n{args.engine}, {events:,} events, median of {args.repeats}:")
    for version, values in speeds.items():
        print(f"  {version:<12} {statistics.median(values):>9,.0f} events/s")
    return 0


def export_source(version: str, workdir: Path) -> Path:
    """The folder to put on PYTHONPATH for `version`."""
    if version == ".":
        return REPO / "src"
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
