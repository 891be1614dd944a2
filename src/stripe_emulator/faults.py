"""Fault injection and Stripe-like rate limiting for `/v1` routes (an ASGI middleware).

Dropped connections: ASGI has no "abort" message. Under uvicorn we get a real drop by starting
the response with an invalid status (999): uvicorn marks the response as started, fails to find
a reason phrase before writing a single byte, and closes the socket. The client sees the
connection closed with no response at all (requests: ConnectionError; the Stripe SDK: a
retryable APIConnectionError), exactly like a network failure. The resulting
"Exception in ASGI application" log record is filtered out. Under servers that accept the
status, the response is left unfinished, which also ends in a closed connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stripe_emulator import ids
from stripe_emulator.api import error_response
from stripe_emulator.errors import API_ERROR, StripeError, rate_limited

_MESSAGES = {
    409: ("lock_timeout", "This object cannot be accessed right now because another API "
          "request or Stripe process is currently accessing it. (emulated fault)"),
}  # fmt: skip


class EmulatedConnectionDrop(Exception):
    """Raised to make the server close the connection without a response."""


class _DropFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], EmulatedConnectionDrop))


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _DropFilter) for existing in logger.filters):
        logger.addFilter(_DropFilter())


@dataclass
class FaultConfig:
    rate: float = 0.0
    statuses: list[int] = field(default_factory=lambda: [500])
    latency_ms: int = 0
    drop_rate: float = 0.0
    path_prefix: str = "/v1"
    retry_after: int = 1
    # Drop after the request was processed (its effects happen, the answer is lost).
    drop_after_processing: bool = False
    # Only the next `count` matching requests get a fault (None: no limit).
    count: int | None = None
    seed: int | None = None


@dataclass
class RateLimitConfig:
    requests_per_second: float = 25.0
    path_prefix: str = "/v1"
    burst: float | None = None


def fault_error(status: int, retry_after: int) -> StripeError:
    if status == 429:
        return rate_limited(retry_after)
    if status in _MESSAGES:
        code, message = _MESSAGES[status]
        return StripeError(status, message, code=code)
    if status >= 500:
        return StripeError(status, "An unknown error occurred (emulated fault).", type_=API_ERROR)
    return StripeError(status, f"Emulated fault with status {status}.")


class Faults:
    """Mutable fault and rate-limit settings, shared by control routes and the middleware."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config: FaultConfig | None = None
        self.rate_limit: RateLimitConfig | None = None
        self._rng = random.Random()
        self._tokens = 0.0
        self._refilled = time.monotonic()

    def set_faults(self, config: FaultConfig | None) -> None:
        with self.lock:
            self.config = config
            if config is not None and config.seed is not None:
                self._rng = random.Random(config.seed)

    def set_rate_limit(self, config: RateLimitConfig | None) -> None:
        with self.lock:
            self.rate_limit = config
            self._tokens = self._capacity()
            self._refilled = time.monotonic()

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "faults": asdict(self.config) if self.config else None,
                "rate_limit": asdict(self.rate_limit) if self.rate_limit else None,
            }

    def _capacity(self) -> float:
        limit = self.rate_limit
        if limit is None:
            return 0.0
        return limit.burst if limit.burst is not None else limit.requests_per_second

    def over_rate_limit(self, path: str) -> bool:
        """Token bucket: `requests_per_second` refill, `burst` (default: one second) depth."""
        with self.lock:
            limit = self.rate_limit
            if limit is None or not path.startswith(limit.path_prefix):
                return False
            now = time.monotonic()
            self._tokens = min(
                self._capacity(),
                self._tokens + (now - self._refilled) * limit.requests_per_second,
            )
            self._refilled = now
            if self._tokens < 1:
                return True
            self._tokens -= 1
            return False

    def decide(self, path: str) -> tuple[float, str | None, int | None]:
        """(latency seconds, "drop"/"error"/None, status) for one request."""
        with self.lock:
            config = self.config
            if config is None or not path.startswith(config.path_prefix):
                return 0.0, None, None
            if config.count is not None and config.count <= 0:
                return 0.0, None, None
            latency = config.latency_ms / 1000
            action: str | None = None
            status = None
            if config.drop_rate and self._rng.random() < config.drop_rate:
                action = "drop"
            elif config.rate and self._rng.random() < config.rate:
                action = "error"
                status = self._rng.choice(config.statuses or [500])
            if action is not None and config.count is not None:
                config.count -= 1
            return latency, action, status


async def drop_connection(send: Send) -> None:
    try:
        await send({"type": "http.response.start", "status": 999, "headers": []})
    except Exception as exc:
        raise EmulatedConnectionDrop() from exc
    raise EmulatedConnectionDrop()


class FaultMiddleware:
    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1"):
            await self.app(scope, receive, send)
            return
        if self.faults.over_rate_limit(path):
            await error_response(rate_limited(1), _request_id())(scope, receive, send)
            return
        latency, action, status = self.faults.decide(path)
        if latency:
            await asyncio.sleep(latency)
        if action == "error" and status is not None:
            config = self.faults.config
            retry_after = config.retry_after if config else 1
            response = error_response(fault_error(status, retry_after), _request_id())
            await response(scope, receive, send)
            return
        if action == "drop":
            config = self.faults.config
            if config is not None and config.drop_after_processing:
                await self.app(scope, receive, _discard)
            await drop_connection(send)
            return
        await self.app(scope, receive, send)


async def _discard(message: Message) -> None:
    return None


def _request_id() -> dict[str, str]:
    return {"Request-Id": ids.new_id("req")}
