"""JSON request bodies parsed strictly (RFC 8259), the documented way to customise FastAPI's
request parsing (a custom `Request` and `APIRoute`).

Python's `json` accepts `NaN`, `Infinity`, numbers that overflow to infinity (`1e400`) and
lone surrogates (`"\\ud800"`); none of them is JSON that a peer can rely on, and none can be
written back in an error answer (each was a 500). orjson refuses all of them and nesting
beyond 1,024 levels, and its error is a `json.JSONDecodeError`, which FastAPI answers with its
usual 422 `json_invalid`.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


def parse_json(body: bytes) -> Any:
    """Strict JSON; raises `json.JSONDecodeError` (as `orjson.JSONDecodeError`)."""
    return orjson.loads(body)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_strictly(request: Request) -> Response:
            return await handle(StrictJSONRequest(request.scope, request.receive))

        return handle_strictly
