"""Optional recording of every `/v1` and `/_emulator` response (for the contract test).

Enabled with `create_app(record_responses=True)`; the responses accumulate in
`app.state.recorded` as `Recorded` tuples. It sits outside fault injection, so injected errors
are recorded too (dropped connections have no response and are not).
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Recorded(NamedTuple):
    method: str
    path: str
    status: int
    body: bytes


class Recording:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Recorded] = []

    def take(self) -> list[Recorded]:
        with self.lock:
            items, self.items = self.items, []
            return items


class RecorderMiddleware:
    def __init__(self, app: ASGIApp, recording: Recording) -> None:
        self.app = app
        self.recording = recording

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/v1", "/_emulator/")):
            await self.app(scope, receive, send)
            return
        status = 0
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    item = Recorded(scope["method"], path, status, b"".join(chunks))
                    with self.recording.lock:
                        self.recording.items.append(item)
            await send(message)

        await self.app(scope, receive, capture)
