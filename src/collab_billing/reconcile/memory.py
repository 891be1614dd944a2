"""Memory during a drain: the cyclic collector paused, and freed memory handed back.

A drain allocates and frees hundreds of thousands of small objects per window, on two threads;
left to their defaults, Python's collector and glibc's allocator cost CPU and memory that grow
with the backlog (figures in each function).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Run the cyclic garbage collector only between windows while events are read and applied.

    Parsed events are trees, freed by reference counting alone. But a window is hundreds of
    thousands of containers alive at once, and the collections that their allocation
    triggers walk them again and again: 30% of the reconciler's CPU (7 s of 24 s draining
    100k events). Some garbage does need the collector (an httpx response is a reference
    cycle holding its body: 2.4 GB at 600k events when pages were read with httpx), so
    `release_memory` collects every `max_buffer` events. What was alive before the drain is
    frozen meanwhile (`gc.freeze`): those collections walk only what the drain made, not the
    whole process (which would stall the API beside it)."""
    if not gc.isenabled():
        yield
        return
    # `serve` freezes its start-up objects once; unfreezing them here would undo that.
    freeze = gc.get_freeze_count() == 0
    gc.disable()
    if freeze:
        gc.freeze()
    try:
        yield
    finally:
        gc.collect()
        if freeze:
            gc.unfreeze()
        gc.enable()


def _load_malloc_trim() -> Callable[[int], int] | None:
    # The process's own symbols, libc's among them: `ctypes.util.find_library` would run
    # `ldconfig -p` in a child process at every start of the CLI.
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Free garbage in reference cycles (see `cyclic_gc_paused`), then hand freed heap memory
    back to the system. Pages are parsed on the read-ahead thread and freed on this one;
    glibc's per-thread arenas then keep growing with the backlog (RSS of 1.5 GB at a million
    events) unless trimmed.

    The two younger generations only: with the collector paused, everything made since the
    last call is in them; what outlived the last call (what was in flight then) is left for
    the full collection at the end of the drain, instead of being walked again at every call.
    (Most of a call's 14 ms at a million events was the structs in flight: they are no longer
    tracked, see `stripe_objects`.)

    The trim runs on a thread of its own (ctypes lets go of the GIL): it walks the whole heap,
    ~18 ms a call at a million events, which the applying thread no longer waits for. At most
    one runs at a time; a call that finds one running skips its own."""
    gc.collect(1)
    if _MALLOC_TRIM is not None and _TRIMMING.acquire(blocking=False):
        threading.Thread(target=_trim, args=(_MALLOC_TRIM,), name="malloc-trim").start()


_TRIMMING = threading.Lock()


def _trim(malloc_trim: Callable[[int], int]) -> None:
    try:
        malloc_trim(0)
    finally:
        _TRIMMING.release()
