"""`python -m bench.stages`: the CPU a drain spends per event in each of its stages, measured
one stage at a time in one thread, on the pages of a real backlog.

    python -m bench.stages --engine sqlite --size 100000

A drain runs its stages at once, on two threads that take turns on the GIL, beside the
emulator and the database on the same cores; its events/s then moves by 20-60% within an
hour, which hides a change of a few µs per event. Here each stage runs alone over the whole
backlog, in the service's own functions, and is timed by this process's CPU clock:

- read: every page read from the emulator through the gateway and decoded into events
  (`StripeGateway.list_events`; the emulator's own CPU is printed apart: Stripe would not
  spend it on this machine);
- prepare: events cut into batches, grouped and settled (`Applier.prepare`, the read-ahead
  thread's part);
- apply: every batch applied (`Applier.apply`, the applying thread's part), SQLite's work
  included; PostgreSQL's server works in its own process, so wall time is printed too.

Then every subscription row is checked against the emulator (`mismatches`, always 0).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from bench.common import DEFAULT_PG_URL, EMULATOR_KEY, EmulatorProcess, emulator, fresh_database
from bench.drain import check_against_emulator, prepare_backlog
from collab_billing.config import Settings
from collab_billing.db.engine import make_engine, make_session_factory
from collab_billing.reconcile.apply import Applier
from collab_billing.reconcile.batching import batches
from collab_billing.reconcile.events import RELEVANT_TYPES, Event
from collab_billing.reconcile.groups import Batch
from collab_billing.reconcile.memory import cyclic_gc_paused
from collab_billing.reconcile.poll import BATCH_SIZE
from collab_billing.stripe_gateway import StripeGateway

T = TypeVar("T")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=__doc__)
    parser.add_argument("--engine", default="sqlite", choices=("sqlite", "postgres"))
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument(
        "--pg-url",
        default=DEFAULT_PG_URL,
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="collab-stages-") as tmp, emulator(Path(tmp)) as emu:
        db = fresh_database(args.engine, Path(tmp), args.pg_url)
        try:
            events = int(prepare_backlog(db, emu, args.size)["events"])
            print(f"{args.engine}, {events:,} events")
            run_stages(db.url, emu)
            print(f"mismatches  {check_against_emulator(db, emu)}")
        finally:
            db.drop()
    return 0


def run_stages(database_url: str, emu: EmulatorProcess) -> None:
    settings = Settings(
        database_url=database_url,
        stripe_api_key=EMULATOR_KEY,
        stripe_api_base=emu.url,
        stripe_requests_per_second=100_000,
    )
    gateway = StripeGateway(settings)
    engine = make_engine(settings.database_url)
    applier = Applier(make_session_factory(engine), gateway)
    times: list[tuple[str, os.times_result, float]] = []
    try:
        with cyclic_gc_paused():  # as in a drain
            emulator_cpu = emu.cpu_seconds()
            # Each page let go of once read, as in a drain (held, a backlog's pages cost the
            # system more for fresh memory than for reading them); read again to keep.
            timed(times, "read", lambda: sum(1 for _ in newest_first_pages(gateway)))
            emulator_cpu = emu.cpu_seconds() - emulator_cpu
            events = oldest_first(list(newest_first_pages(gateway)))
            prepared = timed(times, "prepare", lambda: prepare_all(applier, events))
            timed(times, "apply", lambda: [applier.apply(b.events, prepared=b) for b in prepared])
    finally:
        engine.dispose()
    count = len(events)
    for name, cpu, wall in times:
        print(
            f"{name:<8} {(cpu.user + cpu.system) * 1e6 / count:6.2f} µs of CPU per event "
            f"(user {cpu.user:5.2f} s, system {cpu.system:5.2f} s, wall {wall:5.2f} s)"
        )
    print(f"emulator {emulator_cpu * 1e6 / count:6.2f} µs of CPU per event, serving the pages")


def newest_first_pages(gateway: StripeGateway) -> Iterator[list[Event]]:
    """Every page of the events a drain reads, through `list_events` as a walk reads them."""
    starting_after: str | None = None
    while True:
        page = gateway.list_events(types=RELEVANT_TYPES, starting_after=starting_after)
        yield page.events
        if not page.has_more or not page.events:
            return
        starting_after = page.events[-1].id


def oldest_first(newest_first: list[list[Event]]) -> list[Event]:
    """As a walk hands them over: by `created`, Stripe's order kept within a second."""
    events = [event for page in newest_first for event in page][::-1]
    events.sort(key=lambda event: event.created)
    return events


def prepare_all(applier: Applier, events: list[Event]) -> list[Batch]:
    return [applier.prepare(list(part)) for part in batches(events, BATCH_SIZE)]


def timed(times: list[tuple[str, os.times_result, float]], name: str, work: Callable[[], T]) -> T:
    """`work()`, its CPU (user and system, this process's threads) and wall time noted."""
    before, wall = os.times(), time.perf_counter()
    result = work()
    after = os.times()
    cpu = os.times_result((a - b for a, b in zip(after, before, strict=True)))
    times.append((name, cpu, time.perf_counter() - wall))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
