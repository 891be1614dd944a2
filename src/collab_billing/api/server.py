"""How `serve` runs the API: uvicorn with httptools and uvloop, in one process or several.

- One write per answer. uvicorn writes the status line and headers, then the body, as two
  `transport.write` calls; uvloop sends each at once, so a small JSON answer costs two
  syscalls and two TCP segments (and two wake-ups of the client). `HttpProtocol` gathers
  the writes made in one turn of the event loop and sends them together at the end of it.
- Worker processes (`serve --workers N`): uvicorn's supervisor binds the socket, starts N
  processes that each build the app with `worker_app` (so each has its own engine, pools and
  reconciler thread; the reconciler's leader lock lets one of them poll), restarts a worker
  that dies, and on SIGTERM or SIGINT stops them all and returns. Prometheus metrics are
  then kept in a directory shared by the workers (`prometheus_client`'s multiprocess mode),
  so that `/metrics` answers for the whole service, not for the worker that got the scrape.
- What start-up allocated is frozen out of the garbage collector (`freeze_startup_objects`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

WORKER_APP = "collab_billing.api.server:worker_app"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class CoalescingTransport:
    """The connection's transport as uvicorn's HTTP protocol sees it: writes made during one
    turn of the event loop go out as one `write` at the end of that turn. Everything else is
    the real transport's (flow control still applies: the real transport gets the bytes one
    turn later, and a turn writes at most what the application sent in it)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        if not self._transport.is_closing():  # the client went away: nothing to send to
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each answer with one syscall."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = CoalescingTransport(transport, self.loop)  # type: ignore[assignment]


def uvicorn_config(
    app: Any, host: str, port: int, workers: int = 1, access_log: bool = True
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        access_log=access_log,
        factory=isinstance(app, str),
        http=HttpProtocol,
        loop="uvloop",
        ws="none",  # no WebSocket route: upgrade requests are answered as plain HTTP
        lifespan="on",
        log_config=None,  # `logs.configure_logging` owns the handlers (uvicorn's propagate)
    )


def worker_app() -> Any:
    """The app of one worker process (uvicorn calls this by name in each new process)."""
    from collab_billing.api.app import create_app
    from collab_billing.config import load_settings
    from collab_billing.logs import configure_logging

    settings = load_settings()  # `serve` checked the settings before starting the workers
    configure_logging(settings)
    app = create_app(settings)
    freeze_startup_objects()
    return app


def freeze_startup_objects() -> None:
    """Take what start-up left alive (modules, classes, the app: ~130,000 objects) out of the
    cyclic garbage collector's reach. A full collection walked all of them, ~100 ms with the
    GIL held, every few thousand webhook deliveries: a pause that every request in flight
    waited out (it was most of the webhook p99). Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def run(app: Any, host: str, port: int, workers: int = 1, access_log: bool = True) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully and return (exit code 0).

    One process: uvicorn handles the signal (finishing requests and the lifespan, so the
    reconciler ends its transaction) and then re-raises it for the previous handler: a no-op
    handler here turns that into a normal return instead of a death by signal.
    Several: `app` is unused (each worker builds its own); uvicorn's supervisor takes the
    signals, stops the workers the same way, waits for them and returns.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    if workers <= 1:
        freeze_startup_objects()
        uvicorn.Server(uvicorn_config(app, host, port, access_log=access_log)).run()
        return
    config = uvicorn_config(WORKER_APP, host, port, workers, access_log)
    with _shared_metrics_directory():
        Multiprocess(config, sockets=[config.bind_socket()]).run()


@contextlib.contextmanager
def _shared_metrics_directory() -> Iterator[None]:
    """`PROMETHEUS_MULTIPROC_DIR` for the workers (set before they import prometheus_client)."""
    if os.environ.get(MULTIPROCESS_DIR):  # the operator chose one
        yield
        return
    directory = tempfile.mkdtemp(prefix="collab-billing-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROCESS_DIR]
        shutil.rmtree(directory, ignore_errors=True)
