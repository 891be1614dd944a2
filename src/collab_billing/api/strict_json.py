"""JSON request bodies parsed strictly (RFC 8259), the documented way to customise FastAPI's
request parsing (a custom `Request` and `APIRoute`).

Python's `json` accepts `NaN`, `Infinity`, numbers that overflow to infinity (`1e400`) and
lone surrogates (`"\\ud800"`); none of them is JSON that a peer can rely on, and none can be
written back in an error answer (each was a 500). orjson refuses all of them and nesting
beyond 1,024 levels, and its error is a `json.JSONDecodeError`, which FastAPI answers with its
usual 422 `json_invalid`; so is a name repeated in an object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


def parse_json(body: bytes, parse_float: Callable[[str], Any] = float) -> Any:
    """Strict JSON; raises `json.JSONDecodeError` (as `orjson.JSONDecodeError`). A name
    repeated in an object is refused too: orjson keeps the last silently, so that
    `{"github_user_id": 1, "github_user_id": 2}` acted on user 2, and a proxy that reads the
    first would check another request than the one served. orjson has no option for it: the
    standard parser's `object_pairs_hook` finds them, on JSON orjson has already checked.
    `parse_float` reads the numbers with a fraction or an exponent."""
    orjson.loads(body)
    return json.loads(body, object_pairs_hook=_refuse_repeated_names, parse_float=parse_float)


def _refuse_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        repeated = next(name for name in names if names.count(name) > 1)
        raise json.JSONDecodeError(f"the name {repeated[:40]!r} is repeated in an object", "", 0)
    return dict(pairs)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # Numbers exactly as written: as a double, 0.30000000000000001 was 0.3 before
            # any check could see its digits (orjson has no option for that either).
            self._json = parse_json(await self.body(), parse_float=Decimal)
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_strictly(request: Request) -> Response:
            return await handle(StrictJSONRequest(request.scope, request.receive))

        return handle_strictly
