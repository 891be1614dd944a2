"""The pieces every benchmark uses: the emulator, databases, and the service under test, which
is driven only through its command line and HTTP (so that any version of it can be measured:
`--rev PATH` or `--python PATH`)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

EMULATOR_KEY = "sk_test_collab_billing_bench"
ADMIN_TOKEN = "bench-admin-token"
WEBHOOK_SECRET = "whsec_bench_secret"
DEFAULT_PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FAST = "100000"  # STRIPE_REQUESTS_PER_SECOND when the client throttle should not matter


@dataclass
class Context:
    """What a benchmark runs with: the service's Python, a scratch folder, the emulator."""

    python: str
    workdir: Path
    emulator: Emulator
    pg_url: str

    def command(self, *args: str) -> list[str]:
        return [self.python, "-m", "collab_billing", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the emulator (always this checkout's: its request counter and tie generation) -----------


class Emulator:
    def __init__(self, workdir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(workdir / "emulator.log", "wb")  # noqa: SIM115
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stripe_emulator", "--port", port, "--no-access-log"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        wait_for_http(f"{self.url}/_emulator/clock")
        self.http = httpx.Client(base_url=self.url, timeout=600)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        response = self.http.request(method, f"/_emulator/{path}", json=body)
        response.raise_for_status()
        return response.json()

    def api(self, method: str, path: str, data: dict[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {EMULATOR_KEY}"}
        response = self.http.request(method, path, data=data, headers=headers)
        response.raise_for_status()
        return response.json()

    def generate(self, customers: int, per_customer: int = 10, **options: Any) -> dict[str, Any]:
        body = {"customers": customers, "events_per_customer": per_customer, "seed": 7}
        body |= {"first_github_user_id": 1, **options}
        result: dict[str, Any] = self.control("POST", "generate", body)
        return result

    def advance(self, seconds: int) -> None:
        self.control("POST", "clock/advance", {"seconds": seconds})

    def requests(self) -> dict[str, Any]:
        counts: dict[str, Any] = self.control("GET", "requests")
        return counts

    def subscriptions(self) -> dict[str, tuple[str, bool]]:
        subs = self.control("GET", "state")["subscriptions"]
        return {s["id"]: (s["status"], bool(s["cancel_at_period_end"])) for s in subs}

    def close(self) -> None:
        self.http.close()
        stop(self.process)
        self.log.close()


# -- databases: created here, migrated by the service's own `migrate` ---------------------------


@dataclass
class Database:
    url: str
    engine_name: str
    admin_url: str | None = None  # PostgreSQL: where to drop it from

    def scalar(self, sql: str) -> int:
        engine = create_engine(self.url)
        with engine.connect() as connection:
            value = connection.scalar(text(sql))
        engine.dispose()
        return int(value or 0)

    def processed(self) -> int:
        return self.scalar("SELECT count(*) FROM processed_stripe_events")

    def add_users(self, first: int, count: int) -> None:
        """Users with GitHub ids first..first+count-1 (`users add` is a process per user)."""
        insert = text("INSERT INTO users (github_user_id, github_login) VALUES (:id, :login)")
        engine = create_engine(self.url)
        with engine.begin() as connection:
            for start in range(first, first + count, 10_000):
                stop = min(start + 10_000, first + count)
                rows = [{"id": n, "login": f"user{n}"} for n in range(start, stop)]
                connection.execute(insert, rows)
        engine.dispose()

    def subscriptions(self) -> dict[str, tuple[str, bool]]:
        sql = (
            "SELECT stripe_subscription_id, stripe_subscription_status, "
            "stripe_cancel_at_period_end FROM billing_subscriptions"
        )
        engine = create_engine(self.url)
        with engine.connect() as connection:
            rows = connection.execute(text(sql)).all()
        engine.dispose()
        return {row[0]: (row[1], bool(row[2])) for row in rows}

    def drop(self) -> None:
        if self.admin_url is None:
            path = make_url(self.url).database or ""
            for suffix in ("", "-wal", "-shm", ".reconciler.lock", ".write.lock", ".write.turn"):
                with contextlib.suppress(FileNotFoundError):
                    Path(path + suffix).unlink()
            return
        name = make_url(self.url).database
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@contextlib.contextmanager
def database(ctx: Context, engine_name: str) -> Iterator[Database]:
    """A new database of its own, migrated by the service under test; dropped afterwards."""
    name = f"collab_billing_bench_{uuid.uuid4().hex[:10]}"
    if engine_name == "sqlite":
        db = Database(f"sqlite:///{ctx.workdir / name}.db", "sqlite")
    else:
        server = make_url(ctx.pg_url).set(drivername="postgresql+psycopg")
        admin_url = server.set(database="postgres").render_as_string(hide_password=False)
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        db = Database(server.set(database=name).render_as_string(False), "postgres", admin_url)
    try:
        subprocess.run(
            ctx.command("migrate"), env=service_env(ctx, db), cwd=ctx.workdir, check=True,
            capture_output=True,
        )  # fmt: skip
        yield db
    finally:
        db.drop()


# -- the service as a process -----------------------------------------------------------------


def service_env(ctx: Context, db: Database, **extra: str) -> dict[str, str]:
    ours = (
        "STRIPE_",
        "RECONCILE_",
        "DATABASE_URL",
        "ADMIN_TOKEN",
        "LOG_",
        "PYTHONPATH",
        "WEBHOOK_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(
        DATABASE_URL=db.url,
        STRIPE_API_KEY=EMULATOR_KEY,
        STRIPE_API_BASE=ctx.emulator.url,
        STRIPE_REQUESTS_PER_SECOND=FAST,
        ADMIN_TOKEN=ADMIN_TOKEN,
        STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    env.update(extra)
    return env


@dataclass
class Run:
    returncode: int
    seconds: float  # from the start of the process to its exit
    peak_rss_mb: float  # its own
    children_peak_rss_mb: float  # the peaks of the processes it started, added up
    children: list[str] = field(default_factory=list)  # their command lines
    output_tail: str = ""


def run_measured(ctx: Context, args: list[str], env: dict[str, str], timeout: float) -> Run:
    """Run a service command to its end (killed after `timeout`), sampling the peak RSS
    (`VmHWM`) of it and of every process it starts."""
    with tempfile.TemporaryFile(dir=ctx.workdir) as output:
        started = time.perf_counter()
        process = subprocess.Popen(args, env=env, cwd=ctx.workdir, stdout=output, stderr=output)
        peaks: dict[int, int] = {}
        names: dict[int, str] = {}
        while process.poll() is None:
            if time.perf_counter() - started > timeout:
                process.kill()
                process.wait()
                break
            for pid in [process.pid, *descendants(process.pid)]:
                peaks[pid] = max(peaks.get(pid, 0), _status_kib(pid, "VmHWM"))
                if pid != process.pid and pid not in names:
                    names[pid] = _cmdline(pid)[:120]
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        output.seek(0)
        tail = output.read().decode(errors="replace")[-3000:]
    own = peaks.pop(process.pid, 0)
    children_kib = sum(peaks.values())
    return Run(
        process.returncode, seconds, own / 1024, children_kib / 1024, list(names.values()), tail
    )


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, less forks not yet replaced by their program (same command
    line as their parent: their pages are the parent's, shared)."""
    found: list[int] = []
    parent_cmdline = _cmdline(pid)
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                if _cmdline(int(child)) != parent_cmdline:
                    found.append(int(child))
                found.extend(descendants(int(child)))
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reconcile_once(ctx: Context, db: Database, timeout: float = 3600, **env: str) -> Run:
    return run_measured(
        ctx, ctx.command("reconcile", "--once"), service_env(ctx, db, **env), timeout
    )


@contextlib.contextmanager
def serve(ctx: Context, db: Database, serve_args: list[str], **env: str) -> Iterator[int]:
    """`collab-billing serve` on a free port (yields the port), its reconciler kept quiet."""
    port = free_port()
    quiet = {"RECONCILE_ENABLED": "false", "RECONCILE_INTERVAL_SECONDS": "3600"}
    # The emulator's clock runs a week ahead for the generated backlogs: its events must pass
    # the webhook route's check of `created`.
    quiet["WEBHOOK_EVENT_MAX_AHEAD_SECONDS"] = str(30 * 86_400)
    with open(ctx.workdir / f"serve-{port}.log", "wb") as log:
        process = subprocess.Popen(
            ctx.command("serve", "--port", str(port), *serve_args),
            env=service_env(ctx, db, **(quiet | env)),
            cwd=ctx.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz")
            yield port
        finally:
            stop(process)
