"""Running the emulator: `serve()` (blocking) and `start_in_thread()` (tests, `dev`).

Both run uvicorn with httptools (the C HTTP parser) and uvloop (the libuv event loop), which
`uvicorn[standard]` installs. `/v1` handlers run on the event loop itself, under the store
lock; no request is handed to a thread pool (only bulk generation runs on a worker thread).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette

from stripe_emulator.app import create_app
from stripe_emulator.store import Store

DEFAULT_PORT = 12111


def _config(app: Starlette, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(app, http="httptools", loop="uvloop", ws="none", **options)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Serve until Ctrl-C (or SIGTERM); returns cleanly instead of raising KeyboardInterrupt."""
    app = create_app(api_key)
    config = _config(app, host=host, port=port, log_level=log_level, access_log=access_log)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


class RunningEmulator:
    """An emulator served by uvicorn on a background thread; stop() or use `with`."""

    def __init__(self, app: Starlette, server: uvicorn.Server, thread: threading.Thread,
                 host: str, port: int) -> None:  # fmt: skip
        self.app = app
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @property
    def store(self) -> Store:
        store: Store = self.app.state.emulator
        return store

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.webhooks.stop()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    *,
    app: Starlette | None = None,
    log_level: str = "warning",
    timeout: float = 10.0,
) -> RunningEmulator:
    """Start on a daemon thread and wait until it accepts connections. Port 0: a free port."""
    app = app if app is not None else create_app(api_key)
    # Bind first ourselves, so port 0 resolves to a real port we can report. The explicit
    # IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets whose proto says TCP, and
    # without it every response waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    actual_port = sock.getsockname()[1]
    config = _config(app, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="stripe-emulator", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the Stripe emulator did not start")
        time.sleep(0.01)
    return RunningEmulator(app, server, thread, host, actual_port)
