"""HTTP for the gateway's direct GETs: a rate limit across threads, kept-alive connections,
Stripe's form encoding, and the SDK's retry schedule and error reading."""

from __future__ import annotations

import functools
import http.client
import json
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Final, NamedTuple
from urllib.parse import urlencode, urlsplit

# How the service starts a process (`walk_process`): a new interpreter, not a fork of the
# service, whose threads may hold locks at the moment of the fork.
PROCESS_START_METHOD: Final = "spawn"


class Throttle:
    """A token bucket across threads (and processes, once `share_with_processes`): at most
    `rate` requests a second on average, with bursts of `burst`. A small burst lets a request
    that came late (a slow page, a busy GIL) be made up for at once, so that a sequential
    reader keeps the full rate; kept well under a second's worth so that Stripe's own bucket is
    never emptied by us alone."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        self.interval = 1.0 / rate
        self.slack = (burst - 1) * self.interval
        self.state = _Slot(threading.Lock(), _Value(0.0))

    @property
    def next_slot(self) -> float:
        return self.state.next.value

    def share_with_processes(self) -> None:
        """Keep the bucket in shared memory from now on: a process started with this throttle
        (`walk_process`) then draws on the same budget. Not done for every throttle, since
        multiprocessing's lock starts a helper process (its resource tracker)."""
        if not isinstance(self.state.next, _Value):
            return  # shared already
        context = multiprocessing.get_context(PROCESS_START_METHOD)
        shared = context.RawValue("d", self.next_slot)
        self.state = _Slot(context.Lock(), shared)  # one assignment: a `wait` sees either

    def wait(self) -> None:
        state = self.state
        with state.lock:
            now = time.monotonic()  # one clock for every process (CLOCK_MONOTONIC)
            slot = max(now - self.slack, state.next.value)
            state.next.value = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _Value:
    """A float where a shared `ctypes` one would be (`.value`), for a throttle of one process."""

    def __init__(self, value: float) -> None:
        self.value = value


class _Slot(NamedTuple):
    """The bucket: when the next request may go, and the lock over it."""

    lock: AbstractContextManager[Any]
    next: _Value  # or a shared `ctypes.c_double`, which has the same `.value`


class Connections:
    """GETs to Stripe's host on one kept-alive `http.client` connection per thread.

    Not urllib3's pool, on purpose: a drain reads ~10 pages of events a second per 1,000
    events/s, each on the thread that takes turns on the GIL with the applying one, and
    urllib3's layers over `http.client` (the target re-encoded byte by byte, the pool, its
    response object) cost ~0.3 ms of CPU a page, ~3 µs an event (`bench.stages`). What they
    gave us that we need is done here: a connection the server closed while it was kept
    alive is replaced and the request made again, once; every other failure is the caller's
    (retried with backoff like the SDK's)."""

    def __init__(self, api_base: str, timeout: float, headers: dict[str, str]) -> None:
        parts = urlsplit(api_base)
        secure = parts.scheme == "https"
        self._connection_class = (
            http.client.HTTPSConnection if secure else http.client.HTTPConnection
        )
        self._host = parts.hostname or ""
        self._port = parts.port
        self._timeout = timeout
        self._headers = headers
        self._local = threading.local()

    def get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of `GET url` (a path and query)."""
        connection, kept = self._take()
        try:
            self.send(connection, url)
            status, headers, body = self.receive(connection)
        except (OSError, http.client.HTTPException) as error:
            if kept and not isinstance(error, TimeoutError):
                return self.get(url)  # the server closed it while it was kept: a new one
            raise
        self._keep(connection)
        return status, headers, body

    def lend(self) -> http.client.HTTPConnection:
        """This thread's kept connection (or a new one), for a caller that sends a request
        before it has received the last (`StripeGateway.walk_events`); see `give_back`."""
        return self._take()[0]

    def give_back(self, connection: http.client.HTTPConnection, awaiting: bool) -> None:
        """Kept again for this thread, unless a request on it is still unanswered (closed)."""
        if awaiting:
            connection.close()
        else:
            self._keep(connection)

    def send(self, connection: http.client.HTTPConnection, url: str) -> None:
        try:
            connection.request("GET", url, headers=self._headers)
        except BaseException:
            connection.close()
            raise

    def receive(self, connection: http.client.HTTPConnection) -> tuple[int, dict[str, str], bytes]:
        """The response to the request `send` made on `connection`; a connection that fails,
        or that the server will close, is closed (`request` opens it again)."""
        try:
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, body

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        self._local.connection = None  # until its request has succeeded
        if connection is not None:
            return connection, True
        return self._connection_class(self._host, self._port, timeout=self._timeout), False

    def _keep(self, connection: http.client.HTTPConnection) -> None:
        if connection.sock is None:
            return
        if getattr(self._local, "connection", None) is None:
            self._local.connection = connection
        else:
            connection.close()


@functools.lru_cache(maxsize=16)
def types_query(types: tuple[str, ...]) -> str:
    """`types[0]=..&types[1]=..`: the same at every page of a drain, encoded once."""
    return urlencode(list(encode_params({"types": list(types)})))


def encode_params(params: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Stripe's form encoding, as the SDK does it: `a[b]=..`, lists as `a[0]=..`."""
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix else str(key)
        if value is None:
            continue
        if isinstance(value, dict):
            yield from encode_params(value, name)
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    yield from encode_params(item, f"{name}[{index}]")
                else:
                    yield f"{name}[{index}]", _form_value(item)
        else:
            yield name, _form_value(value)


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def network_backoff(attempt: int) -> float:
    """The SDK's schedule: 0.5 s doubling up to 5 s, with jitter."""
    delay = min(0.5 * 2.0**attempt, 5.0)
    return max(0.5, delay * (0.5 + random.random() / 2))


def error_of(status: int, body: bytes) -> tuple[str, str]:
    """Stripe's error type and message from an error body (like the SDK's error classes)."""
    try:
        error = json.loads(body)["error"]
        return str(error.get("type") or "api_error"), str(error.get("message") or "no message")
    except (ValueError, KeyError, TypeError, AttributeError):
        kind = "api_error" if status >= 500 else "invalid_request_error"
        return kind, f"HTTP {status} with a body that is not Stripe's"


def connection_message(error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return "Request to Stripe timed out"
    return f"Unexpected error communicating with Stripe ({type(error).__name__})"


def retry_after_seconds(raw_headers: Any, attempt: int) -> float:
    backoff = min(0.5 * 2.0**attempt, 30.0)
    headers: dict[str, str] = {k.lower(): str(v) for k, v in (raw_headers or {}).items()}
    try:
        delay = float(headers["retry-after"])
    except (KeyError, ValueError):
        return backoff
    return min(delay, 60.0)
