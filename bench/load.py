"""HTTP load for the benchmarks of the running service, from one asyncio process.

Two shapes: an open loop (`paced`: request i is sent at start + i/rate whatever the answers
do, as Stripe sends webhooks and as clients arrive at an API), whose latencies include any
queueing the server causes; and a closed loop (`closed_loop`: each connection sends its next
request when the answer came), which finds the most the server does, at a latency set by the
number of connections (Little's law), not by the server alone.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

# Raw HTTP/1.1 over asyncio streams, not an HTTP client library: the generator shares the two
# cores with the server, so it has to be cheap; one process, a few connections, keep-alive,
# one request in flight per connection (no pipelining). About 40 us of CPU per request, so a
# few percent of a core at the rates measured here; httpx costs ~1 ms a request, and 16
# sender threads contend for the GIL, which shows up as latency that is not the service's.
# The CPU each side used is in the results (`server_cpu_ms_per_request`, `generator_cpu_pct`).
GENERATOR = "asyncio raw-socket HTTP/1.1 keep-alive client (no pipelining), 1 process"
GENERATOR_SHORT = "asyncio-raw-http1"  # in each printed row
# Idle connections older than this are not reused (uvicorn closes them after 5 s).
KEEP_ALIVE_SECONDS = 2.0

Request = Callable[[int], bytes]  # request number -> the request's bytes
Outcome = Callable[[int, bytes], str]  # status, body -> what is counted


def run_load(load: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(load)` with this process's cyclic garbage collector paused: a full
    collection of the generator's tens of thousands of tasks and latencies took 80-90 ms, in
    which answers waited unread and counted as the server's latency (p99 82 ms at 2,000
    requests/s on PostgreSQL, against ~10 ms without)."""
    with _collector_paused():
        return asyncio.run(load)


@contextmanager
def _collector_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def paced(
    port: int, count: int, rate: float, request_of: Request, outcome_of: Outcome
) -> tuple[list[float], dict[str, int], float]:
    """Send request i at start + i/rate (a new connection when every open one is busy):
    latencies, outcomes counted, and the seconds from the first request's time to the end."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened: list[asyncio.StreamWriter] = []

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            reader, writer, since = idle.pop()
            if time.perf_counter() - since < KEEP_ALIVE_SECONDS:
                return reader, writer
            writer.close()  # the server may be closing it
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        return reader, writer

    async def one(index: int) -> None:
        request = request_of(index)
        started = time.perf_counter()
        for attempt in (1, 2):  # a kept-alive connection can close under us: once more, anew
            reader, writer = await connection()
            writer.write(request)
            try:
                status, answer = await read_response(reader)
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if attempt == 2:
                    raise
        latencies.append(time.perf_counter() - started)
        idle.append((reader, writer, time.perf_counter()))
        outcome = outcome_of(status, answer)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    # Each request's task is made when it is due, not all up front: 20,000 tasks waiting on
    # timers made the first second's requests late by up to 0.2 s, and then sent at once.
    started: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    try:
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            started.append(asyncio.create_task(one(index)))
        await asyncio.gather(*started)
    finally:
        for writer in opened:
            writer.close()
    return latencies, outcomes, time.perf_counter() - start


async def closed_loop(
    port: int, seconds: float, concurrency: int, request_of: Request, outcome_of: Outcome
) -> tuple[list[float], dict[str, int], float]:
    """`concurrency` connections, each sending its next request (numbered connection, then
    + concurrency, ...) when the answer to the last came, for `seconds`."""
    latencies: list[float] = []
    outcomes: dict[str, int] = {}
    deadline = time.perf_counter() + seconds

    async def connection(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = first
        try:
            while time.perf_counter() < deadline:
                request = request_of(index)
                started = time.perf_counter()
                writer.write(request)
                status, body = await read_response(reader)
                latencies.append(time.perf_counter() - started)
                outcome = outcome_of(status, body)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                index += concurrency
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    return latencies, outcomes, time.perf_counter() - started


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body
