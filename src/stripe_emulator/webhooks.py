"""Webhook delivery, signed exactly as Stripe signs: `Stripe-Signature: t=<unix>,v1=<hex>`
where v1 = HMAC-SHA256(secret, f"{t}.{body}").

Deliveries run on one background thread so API requests never wait for a receiver. A failed
delivery (error or non-2xx) is retried with exponential backoff (`retry_delays`), as Stripe
does over days; `pending_webhooks` on the event counts deliveries not yet finished. The
timestamp `t` is real wall-clock time, not the emulator's clock, because receivers check it
against their own clock (the SDK's tolerance is 300 s).
Events made by `/_emulator/generate` are not delivered (benchmarks create millions).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from stripe_emulator import ids
from stripe_emulator.events import Event
from stripe_emulator.store import Store


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Endpoint:
    id: str
    url: str
    secret: str
    enabled_events: list[str] = field(default_factory=lambda: ["*"])

    def wants(self, event_type: str) -> bool:
        for pattern in self.enabled_events:
            if pattern == "*" or pattern == event_type:
                return True
            if pattern.endswith("*") and event_type.startswith(pattern[:-1]):
                return True
        return False


@dataclass
class Attempt:
    event_id: str
    endpoint_id: str
    attempt: int
    status: int | None
    error: str | None
    at: float


class WebhookDispatcher:
    def __init__(
        self,
        store: Store,
        retry_delays: tuple[float, ...] = (1, 2, 4, 8, 16),
        timeout: float = 5.0,
    ) -> None:
        self.store = store
        self.retry_delays = retry_delays
        self.timeout = timeout
        self.endpoints: dict[str, Endpoint] = {}
        self.attempts: deque[Attempt] = deque(maxlen=10_000)
        self._queue: list[tuple[float, int, str, str, int]] = []
        self._sequence = itertools.count()
        self._in_flight = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._drop = 0  # deliveries still to lose (`drop_next`)

    # --- endpoints --------------------------------------------------------------------

    def add(self, url: str, secret: str | None, enabled_events: list[str] | None) -> Endpoint:
        endpoint = Endpoint(ids.new_id("we"), url, secret or ids.secret(), enabled_events or ["*"])
        with self._cond:
            self.endpoints[endpoint.id] = endpoint
        with self.store.lock:
            self.store.on_event = self._on_event
        self._ensure_thread()
        return endpoint

    def remove(self, endpoint_id: str) -> bool:
        with self._cond:
            return self.endpoints.pop(endpoint_id, None) is not None

    def drop_next(self, count: int) -> None:
        """Lose the next `count` deliveries: never sent, never retried (a missed webhook)."""
        with self._cond:
            self._drop = count

    def reset(self) -> None:
        with self._cond:
            self._drop = 0
            self.endpoints.clear()
            self._queue.clear()
            self.attempts.clear()

    def describe(self) -> list[dict[str, Any]]:
        with self._cond:
            return [asdict(endpoint) for endpoint in self.endpoints.values()]

    def log(self) -> list[dict[str, Any]]:
        with self._cond:
            return [asdict(attempt) for attempt in self.attempts]

    # --- queueing (called with store.lock held, from Store.emit) -----------------------

    def _on_event(self, event: Event) -> None:
        with self._cond:
            targets = [ep for ep in self.endpoints.values() if ep.wants(event.type)]
            for endpoint in targets:
                entry = (time.monotonic(), next(self._sequence), event.id, endpoint.id, 1)
                heapq.heappush(self._queue, entry)
            if targets:
                self._cond.notify()
        if targets:
            pending = self.store.pending_webhooks
            pending[event.id] = pending.get(event.id, 0) + len(targets)

    # --- the worker --------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(
                    target=self._run, name="stripe-emulator-webhooks", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no delivery is queued or running (for tests)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def _next(self) -> tuple[str, str, int] | None:
        with self._cond:
            while not self._stopping:
                if self._queue:
                    due = self._queue[0][0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        _, _, event_id, endpoint_id, attempt = heapq.heappop(self._queue)
                        self._in_flight += 1
                        return event_id, endpoint_id, attempt
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while (job := self._next()) is not None:
                try:
                    self._deliver(client, *job)
                finally:
                    with self._cond:
                        self._in_flight -= 1
                        self._cond.notify_all()

    def _deliver(self, client: httpx.Client, event_id: str, endpoint_id: str, attempt: int) -> None:
        with self._cond:
            endpoint = self.endpoints.get(endpoint_id)
        with self.store.lock:
            event = self.store.events.get(event_id)
            payload = json.dumps(self.store.render_event(event), indent=2) if event else None
        if endpoint is None or payload is None or self._dropped(event_id, endpoint_id, attempt):
            self._finish(event_id)
            return
        status, error = self._post(client, endpoint, payload.encode())
        with self._cond:
            self.attempts.append(
                Attempt(event_id, endpoint_id, attempt, status, error, time.time())
            )
            failed = error is not None or status is None or not 200 <= status < 300
            if failed and attempt <= len(self.retry_delays):
                due = time.monotonic() + self.retry_delays[attempt - 1]
                heapq.heappush(
                    self._queue, (due, next(self._sequence), event_id, endpoint_id, attempt + 1)
                )
                return
        self._finish(event_id)

    def _dropped(self, event_id: str, endpoint_id: str, attempt: int) -> bool:
        with self._cond:
            if self._drop <= 0:
                return False
            self._drop -= 1
            self.attempts.append(
                Attempt(event_id, endpoint_id, attempt, None, "dropped (emulated)", time.time())
            )
            return True

    def _post(
        self, client: httpx.Client, endpoint: Endpoint, body: bytes
    ) -> tuple[int | None, str | None]:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign(body, endpoint.secret, int(time.time())),
        }
        try:
            response = client.post(endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        return response.status_code, None

    def _finish(self, event_id: str) -> None:
        with self.store.lock:
            pending = self.store.pending_webhooks
            left = pending.get(event_id, 0) - 1
            if left > 0:
                pending[event_id] = left
            else:
                pending.pop(event_id, None)
