"""How `serve` runs the API: stock uvicorn (`uvicorn[standard]`), in one process or several.

- Worker processes (`serve --workers N`): uvicorn's supervisor binds the socket, starts N
  processes that each build the app with `worker_app` (so each has its own engine, pools and
  reconciler thread; the reconciler's leader lock lets one of them poll), restarts a worker
  that dies, and on SIGTERM or SIGINT stops them all and returns; a worker whose supervisor
  died (SIGKILL) stops by itself. Prometheus metrics are then kept in a directory shared by
  the workers (`prometheus_client`'s multiprocess mode), so that `/metrics` answers for the
  whole service, not for the worker that got the scrape.
- What start-up allocated is frozen out of the garbage collector (`freeze_startup_objects`).
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

WORKER_APP = "collab_billing.api.server:worker_app"
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
SUPERVISOR_PID = "COLLAB_BILLING_SUPERVISOR_PID"


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
    stop_with_supervisor()
    freeze_startup_objects()
    return app


def stop_with_supervisor(check_seconds: float = 1.0) -> None:
    """A worker stops (as on SIGTERM: its requests and reconciler transaction finished) once
    its supervisor is gone. uvicorn's workers outlive a supervisor killed with SIGKILL: they
    went on serving and polling, holding the port, so that `serve` could not start again.
    The supervisor's pid comes from the environment it gave the worker: a worker still
    starting when it died has another parent already by now."""
    supervisor = int(os.environ.get(SUPERVISOR_PID, os.getppid()))

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(check_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


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
    os.environ[SUPERVISOR_PID] = str(os.getpid())  # for `stop_with_supervisor`
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
