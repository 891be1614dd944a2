"""Shared plumbing of the benchmarks: databases, the emulator process, child processes, results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, create_engine, insert, text

from collab_billing.reconcile import ledger
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.db.migrate import upgrade_to_head
from collab_billing.db.models import User

EMULATOR_KEY = "sk_test_collab_billing_bench"
REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# Where the benchmarks reach PostgreSQL (each creates and drops a database of its own there).
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@dataclass
class Result:
    """One row of the table."""

    benchmark: str
    engine: str
    size: int
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


# -- databases -----------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    engine_name: str
    cleanup: Any = None

    def engine(self) -> Engine:
        return make_engine(self.url)

    def drop(self) -> None:
        if self.cleanup is not None:
            self.cleanup()


def fresh_database(engine_name: str, workdir: Path, pg_base: str) -> Database:
    """A new, migrated, empty database: a SQLite file or a PostgreSQL database of its own."""
    if engine_name == "sqlite":
        path = workdir / f"bench-{uuid.uuid4().hex[:8]}.db"
        db = Database(f"sqlite:///{path}", "sqlite")

        def remove() -> None:
            for suffix in ("", "-wal", "-shm", ".reconciler.lock", ".write.lock", ".write.turn"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()

        db.cleanup = remove
    else:
        name = f"collab_billing_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(_pg_url(pg_base, "postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()

        def drop() -> None:
            admin = create_engine(_pg_url(pg_base, "postgres"), isolation_level="AUTOCOMMIT")
            with admin.connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()

        db = Database(_pg_url(pg_base, name), "postgres", drop)
    engine = make_engine(db.url)
    upgrade_to_head(engine)
    engine.dispose()
    return db


def _pg_url(base: str, database: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(base).set(drivername="postgresql+psycopg", database=database)
    return url.render_as_string(hide_password=False)


def seed_users(db: Database, customers: int, cursor: int | None = None) -> None:
    """Users 1..N and a cursor older than the backlog (tests/reconcile_helpers.py's approach):
    by default eight days back; a backlog's drain passes the second just before it."""
    engine = db.engine()
    factory = make_session_factory(engine)
    with factory() as session, session.begin():
        step = 10_000
        for start in range(1, customers + 1, step):
            stop = min(start + step, customers + 1)
            session.execute(
                insert(User),
                [{"github_user_id": n, "github_login": f"user{n}"} for n in range(start, stop)],
            )
        if cursor is None:
            cursor = int(time.time()) - 8 * 86_400
        ledger.write_state(session, ledger.CURSOR, cursor)
        ledger.write_state(session, ledger.LAST_DRAIN_AT, int(time.time()))
    engine.dispose()


# -- the emulator, as a separate process -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float = 30.0, path: str = "/_emulator/clock") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url + path, timeout=1.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start") from None
            time.sleep(0.05)


class EmulatorProcess:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"emulator-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [PYTHON, "-m", "stripe_emulator", "--port", str(self.port), "--no-access-log"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        wait_for_http(self.url)
        self.http = httpx.Client(base_url=self.url, timeout=600)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json() if response.content else None

    def cpu_seconds(self) -> float:
        """User + system CPU the emulator has used so far (0 where /proc is missing)."""
        return process_cpu_seconds(self.process.pid)

    def api(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {EMULATOR_KEY}"}
        if method == "GET":
            response = self.http.request(method, path, params=data, headers=headers)
        else:
            response = self.http.request(method, path, data=data, headers=headers)
        response.raise_for_status()
        return response.json()

    def price(self) -> str:
        product = self.api("POST", "/v1/products", {"name": "Collab Pro"})
        price = self.api(
            "POST",
            "/v1/prices",
            {
                "product": product["id"],
                "unit_amount": 2000,
                "currency": "usd",
                "recurring[interval]": "month",
            },
        )
        return str(price["id"])

    def generate(self, customers: int, per_customer: int, **extra: Any) -> dict[str, Any]:
        body = {"customers": customers, "events_per_customer": per_customer, "seed": 7}
        body.update({"first_github_user_id": 1, **extra})
        result: dict[str, Any] = self.control("POST", "generate", body)
        return result

    def reset(self) -> None:
        self.control("DELETE", "state")

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextlib.contextmanager
def emulator(workdir: Path) -> Iterator[EmulatorProcess]:
    running = EmulatorProcess(workdir)
    try:
        yield running
    finally:
        running.stop()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (0 when it is gone or /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# -- child processes of the service -----------------------------------------------------------


def service_env(db: Database, emulator_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "RECONCILE_"))}
    env.update(
        DATABASE_URL=db.url,
        STRIPE_API_KEY=EMULATOR_KEY,
        STRIPE_API_BASE=emulator_url,
        STRIPE_MAX_NETWORK_RETRIES="2",
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


@dataclass
class ChildRun:
    returncode: int
    seconds: float
    peak_rss_mb: float
    log_lines: list[dict[str, Any]]
    stderr_tail: str
    cpu_seconds: float = 0.0  # user + system, of all its threads (and its waited children)
    machine_cpu: dict[str, float] = field(default_factory=dict)  # `cpu_shares` while it ran
    # The peaks of the processes it started (the walks' worker, multiprocessing's resource
    # tracker), added up: its memory beside `peak_rss_mb`.
    helpers_peak_rss_mb: float = 0.0


def cpu_times() -> list[int]:
    """The machine's CPU time so far, all cores, in ticks, by state: user, nice, system, idle,
    iowait, irq, softirq, steal (`/proc/stat`); empty without /proc."""
    with contextlib.suppress(OSError, ValueError):
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return []


def cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """% of the machine's CPU time between two `cpu_times()` that no one used (`idle_pct`) and
    that the hypervisor gave to other machines (`steal_pct`). Idle CPU during a drain is what
    the service left unused; a slow run with little stolen was slowed by the machine itself
    (docs/benchmarks.md, thirteenth round)."""
    if len(before) != 8 or len(after) != 8:  # no /proc (then or now): nothing to tell
        return {}
    spent = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(spent)
    if total <= 0:
        return {}
    return {
        "idle_pct": round(100 * (spent[3] + spent[4]) / total, 1),
        "steal_pct": round(100 * spent[7] / total, 1),
    }


def peak_rss_kib(pid: int) -> int:
    """A process's `VmHWM` so far, in KiB; 0 once it is gone (or without /proc)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    """The programs that `pid`'s threads (any of them) started and that still run. A child
    still running `pid`'s own command is left out: a fork not yet replaced by its program,
    whose resident pages are `pid`'s, shared (counted, they made the walks' worker, spawned
    mid-drain, look as large as the service)."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        own = Path(f"/proc/{pid}/cmdline").read_bytes()
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/cmdline").read_bytes() != own:
                        found.append(int(child))
    return found


def run_child(args: list[str], env: dict[str, str], workdir: Path, timeout: float) -> ChildRun:
    """Run a command to its end, with its peak RSS and its child processes' peaks.

    The peak is the child's own `VmHWM` (per address space, so reset by exec), sampled until
    it exits. wait4's `ru_maxrss` would not do: it counts the forked copy of this (large)
    benchmark process before the exec."""
    with tempfile.TemporaryFile(dir=workdir) as err:
        started, cpu_before = time.perf_counter(), cpu_times()
        process = subprocess.Popen(args, env=env, cwd=workdir, stdout=err, stderr=err)
        deadline = started + timeout
        peak_kib = 0
        helper_peaks: dict[int, int] = {}
        while True:
            peak_kib = max(peak_kib, peak_rss_kib(process.pid))
            for helper in children_of(process.pid):
                helper_peaks[helper] = max(helper_peaks.get(helper, 0), peak_rss_kib(helper))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        machine_cpu = cpu_shares(cpu_before, cpu_times())
        process.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        output = err.read().decode(errors="replace")
    lines = []
    for line in output.splitlines():
        with contextlib.suppress(ValueError):
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                lines.append(parsed)
    peak_kib = peak_kib or usage.ru_maxrss  # no /proc: the upper bound
    cpu = usage.ru_utime + usage.ru_stime
    helpers_mib = sum(helper_peaks.values()) / 1024
    return ChildRun(
        process.returncode,
        seconds,
        peak_kib / 1024,
        lines,
        output[-3000:],
        cpu,
        machine_cpu,
        helpers_mib,
    )


def reconcile_once(
    db: Database, emulator_url: str, workdir: Path, timeout: float = 3600, **env: str
) -> tuple[ChildRun, dict[str, Any]]:
    """`collab-billing reconcile --once`; returns the run and its `poll` log record."""
    run = run_child(
        [PYTHON, "-m", "collab_billing", "reconcile", "--once"],
        service_env(db, emulator_url, **env),
        workdir,
        timeout,
    )
    polls = [line for line in run.log_lines if line.get("message") == "poll"]
    if run.returncode != 0 or not polls:
        raise RuntimeError(f"reconcile --once failed ({run.returncode}):\n{run.stderr_tail}")
    return run, polls[-1]


# -- reporting ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def python_loop_ms() -> float:
    """Milliseconds for a fixed pure-Python loop, best of 3: how fast this machine runs
    Python right now. Machines of the same description have differed 7x, and one machine
    drifts; figures from two runs compare only as far as this does."""

    def loop() -> int:
        total = 0
        for number in range(1_000_000):
            total += number
        return total

    return round(min(timeit.repeat(loop, number=1, repeat=3)) * 1000, 1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
