"""Read ahead on threads while the caller applies: the next window, or several slices of a
backlog at once, handed over in order."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import Full, Queue
from typing import TypeVar, cast

T = TypeVar("T")

READ_AHEAD = 1  # windows read while the previous one is applied
_DONE = object()


def read_ahead(windows: Iterator[T]) -> Generator[T, None, None]:
    """Read the next window on a thread while the caller applies this one: Stripe's (and the
    network's) latency then overlaps the database writes. At most READ_AHEAD windows wait, so
    memory stays bounded by the buffer whatever the backlog."""
    return in_order([lambda: windows], concurrency=1, depth=READ_AHEAD)


def in_order(
    sources: Sequence[Callable[[], Iterator[T]]], concurrency: int, depth: int = 1
) -> Generator[T, None, None]:
    """Every item of the first source, then of the second, and so on; the sources are read
    `concurrency` at a time, each on a thread and at most `depth` items ahead of the caller.

    Sources start in order, so the one the caller reads from has always started: a thread
    that waits because its source is ahead never keeps an earlier source from running. An
    error in a source is raised when the caller reaches it; closing the generator stops the
    threads (each after its current item)."""
    queues: list[Queue[object]] = [Queue(maxsize=depth) for _ in sources]
    stop = threading.Event()

    def put(queue: Queue[object], item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce(source: Callable[[], Iterator[T]], queue: Queue[object]) -> None:
        try:
            for item in source():
                if not put(queue, item):
                    return
            put(queue, _DONE)
        except BaseException as error:  # handed to the consumer, raised there
            put(queue, error)

    threads = ThreadPoolExecutor(concurrency, thread_name_prefix="reconcile-read-ahead")
    try:
        for source, queue in zip(sources, queues, strict=True):
            threads.submit(produce, source, queue)
        for queue in queues:
            while True:
                item = queue.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield cast(T, item)
    finally:
        stop.set()
        threads.shutdown(wait=True, cancel_futures=True)
