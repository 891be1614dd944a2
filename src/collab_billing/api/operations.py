"""`GET /metrics` in Prometheus' text format."""

from __future__ import annotations

import glob
import os
import re

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from collab_billing.api.server import MULTIPROCESS_DIR

router = APIRouter(tags=["operations"])

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
def prometheus_metrics(request: Request) -> Response:
    """This process's metrics (every worker's under `serve --workers N`), then the
    reconciler's gauges, read from the database."""
    directory = os.environ.get(MULTIPROCESS_DIR)
    if directory:
        forget_dead_workers(directory)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        processes = generate_latest(registry)
    else:
        processes = generate_latest(REGISTRY)
    database = generate_latest(request.app.state.gauges)
    return Response(processes + database, media_type=CONTENT_TYPE_LATEST)


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that are gone (killed, or restarted by uvicorn's
    supervisor): prometheus-client keeps them until `mark_process_dead(pid)` is called,
    which gunicorn calls from its `child_exit` hook and uvicorn's supervisor has no hook for,
    so the dead are found here, by their files' pids."""
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        found = _LIVE_GAUGE_FILE.search(os.path.basename(path))
        if found and not _alive(int(found.group(1))):
            mark_process_dead(int(found.group(1)), directory)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, as another user
    return True
