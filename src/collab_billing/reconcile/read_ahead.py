"""The next window of events, read on a thread while the caller applies this one."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from queue import Full, Queue
from typing import TypeVar, cast

T = TypeVar("T")

READ_AHEAD = 1  # windows read while the previous one is applied
_DONE = object()


def read_ahead(windows: Iterator[T]) -> Generator[T, None, None]:
    """Read the next window on a thread while the caller applies this one: Stripe's (and the
    network's) latency then overlaps the database writes. At most READ_AHEAD windows wait, so
    memory stays bounded by the buffer whatever the backlog."""
    queue: Queue[object] = Queue(maxsize=READ_AHEAD)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for window in windows:
                if not put(window):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, raised there
            put(error)

    thread = threading.Thread(target=produce, name="reconcile-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)
    finally:
        stop.set()
        thread.join()
