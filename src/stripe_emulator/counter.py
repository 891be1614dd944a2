"""Counting `/v1` requests on the emulator's side (an ASGI middleware): how many, by route and
by status, and how many were in flight at once. Benchmarks read it with
`GET /_emulator/requests` (and zero it with DELETE), so their counts do not depend on what
the service under test reports about itself.

Routes are counted as `METHOD /v1/path` with object ids replaced by `{id}`
(`GET /v1/subscriptions/{id}`). A request is in flight from its arrival to the end of its
answer: the injected latency and rate-limit answers count too (this middleware sits outside
the fault middleware). Everything runs on the server's one event loop, so plain ints do.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# An object's id (`cus_NffrFeUfNV2Hib`), not a word of a path (`active_entitlements`).
_ID = re.compile(r"^[a-z]+_(?=[a-z]*[A-Z0-9])[A-Za-z0-9]+$")


def route_of(method: str, path: str) -> str:
    parts = ["{id}" if _ID.match(part) else part for part in path.split("/")]
    return f"{method} {'/'.join(parts)}"


class RequestCounts:
    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counts (requests in flight now stay in flight)."""
        self.by_route: Counter[str] = Counter()
        self.by_status: Counter[str] = Counter()
        self.max_in_flight = self.in_flight

    def describe(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_route.values()),
            "by_route": dict(self.by_route),
            "by_status": dict(self.by_status),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
        }


class CountingMiddleware:
    def __init__(self, app: ASGIApp, counts: RequestCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1"):
            await self.app(scope, receive, send)
            return
        counts = self.counts
        counts.by_route[route_of(scope["method"], path)] += 1
        counts.in_flight += 1
        counts.max_in_flight = max(counts.max_in_flight, counts.in_flight)
        status = "dropped"

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            counts.in_flight -= 1
            counts.by_status[status if status != "999" else "dropped"] += 1
