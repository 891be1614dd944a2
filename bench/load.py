"""HTTP load on the running service, from one asyncio process, over raw HTTP/1.1 keep-alive
connections (an HTTP client library costs ~1 ms of CPU a request, on the cores the server
needs; this costs ~40 us).

`paced`: request i is sent at start + i/rate whatever the answers do (an open loop, as Stripe
sends webhooks and clients arrive), so latencies include the queueing the server causes.
`closed_loop`: each connection sends its next request when its answer came (the most the
server does).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
Request = Callable[[int], bytes]  # request number -> its bytes
KEEP_ALIVE_SECONDS = 2.0  # idle connections older than this are not reused (uvicorn: 5 s)


@dataclass
class Load:
    sent_at: list[float] = field(default_factory=list)  # perf_counter, in answer order
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self, sent_at: float, status: int) -> None:
        self.sent_at.append(sent_at)
        self.latencies.append(time.perf_counter() - sent_at)
        self.statuses[status] = self.statuses.get(status, 0) + 1


def run_load(load: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(load)` with the cyclic collector paused: a full collection of the
    generator's tasks took 80-90 ms, counted as the server's latency."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(load)
    finally:
        gc.enable()


async def paced(port: int, count: int, rate: float, request_of: Request) -> Load:
    load = Load()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    opened: list[asyncio.StreamWriter] = []

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            reader, writer, since = idle.pop()
            if time.perf_counter() - since < KEEP_ALIVE_SECONDS:
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened.append(writer)
        return reader, writer

    async def one(index: int) -> None:
        request, sent_at = request_of(index), time.perf_counter()
        for attempt in (1, 2):  # a kept-alive connection may close under us: once more, anew
            reader, writer = await connection()
            writer.write(request)
            try:
                status, _ = await read_response(reader)
                break
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                if attempt == 2:
                    raise
        load.record(sent_at, status)
        idle.append((reader, writer, time.perf_counter()))

    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    try:
        for index in range(count):  # each task made when due: timers en masse run late
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
    finally:
        for writer in opened:
            writer.close()
    load.seconds = time.perf_counter() - start
    return load


async def closed_loop(port: int, seconds: float, concurrency: int, request_of: Request) -> Load:
    load = Load()
    deadline = time.perf_counter() + seconds

    async def connection(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                sent_at = time.perf_counter()
                writer.write(request_of(index))
                status, _ = await read_response(reader)
                load.record(sent_at, status)
                index += concurrency
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(concurrency)))
    load.seconds = time.perf_counter() - start
    return load


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return int(lines[0].split()[1]), body


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]
