"""`X-Request-Id`: taken from the client when it is a safe token, made up otherwise, put on
every log line of the request (through `logs.REQUEST_ID`) and returned in the response."""

from __future__ import annotations

import logging

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from collab_billing.logs import accept_request_id, request_id_scope

HEADER = "X-Request-Id"
log = logging.getLogger(__name__)


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = dict(scope["headers"]).get(HEADER.lower().encode())
        request_id = accept_request_id(presented.decode("latin-1") if presented else None)
        scope.setdefault("state", {})["request_id"] = request_id  # for the 500 handler

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        with request_id_scope(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                # Logged here, while the request id is still set; the server answers 500.
                log.exception(
                    "request failed", extra={"method": scope["method"], "path": scope["path"]}
                )
                raise
