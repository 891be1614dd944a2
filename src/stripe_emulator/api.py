"""The `/v1` request pipeline: auth, parameters, routing, idempotency, expansion, errors.

Handlers are plain synchronous functions registered with `@route(method, path)`; they get a
`Call` (the store, typed `Params`, path ids, request info) and return a JSON dict, or, when
the request asks for no expansion (`call.expanding` is False), possibly the response already
encoded as JSON bytes (the event list does, splicing each event's bytes). The pipeline runs
each handler, and its idempotency bookkeeping, under the store lock, so concurrent requests
(even with the same Idempotency-Key) are serialised. Handlers run on the event loop itself:
they are short and never block, so a thread pool would only add a hand-off per request.

Responses are encoded with orjson (compact, UTF-8) by `objects.dumps`, which falls back to the
standard library for the rare values orjson refuses (non-string keys, integers beyond 64 bits).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from stripe_emulator import ids
from stripe_emulator.errors import (
    IDEMPOTENCY_ERROR,
    StripeError,
    bad_request,
    invalid,
    unrecognized_url,
)
from stripe_emulator.expand import expand
from stripe_emulator.forms import Params, decode, query_pairs
from stripe_emulator.objects import API_VERSION, Json, dumps, list_object
from stripe_emulator.pagination import Positions, page_positions
from stripe_emulator.store import IdempotentResult, RequestInfo, Store, Table


@dataclass
class Call:
    store: Store
    params: Params
    path: dict[str, str]
    info: RequestInfo
    # True when the request has `expand[]`: the handler must then return a dict, not bytes.
    expanding: bool = False

    @property
    def id(self) -> str:
        return self.path["id"]


# A handler returns a JSON dict, or (only when not `call.expanding`) encoded JSON bytes.
Handler = Callable[[Call], Json | bytes]


@dataclass
class Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler


ROUTES: list[Route] = []


def route(method: str, template: str) -> Callable[[Handler], Handler]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)

    def register(handler: Handler) -> Handler:
        ROUTES.append(Route(method, template, re.compile(f"^{regex}$"), handler))
        return handler

    return register


def json_response(status: int, body: Json, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status, headers=headers, media_type="application/json")


def error_response(error: StripeError, headers: dict[str, str] | None = None) -> Response:
    return json_response(error.status, error.body(), {**(headers or {}), **error.headers})


# --- authentication -----------------------------------------------------------------------


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":  # curl -u sk_test_...:
        try:
            return base64.b64decode(credentials).decode().split(":", 1)[0]
        except ValueError:
            return None
    return None


def authenticate(request: Request, api_key: str | None) -> str:
    key = _presented_key(request)
    if not key:
        raise StripeError(
            401,
            "You did not provide an API key. You need to provide your API key in the "
            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
            "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
            "or we can help at https://support.stripe.com/.",
        )
    valid = key == api_key if api_key is not None else key.startswith("sk_test_")
    if not valid:
        raise StripeError(
            401, f"Invalid API Key provided: {key[:8]}****{key[-4:]}", code="api_key_invalid"
        )
    return key


_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$")


def api_version(request: Request) -> str:
    version = request.headers.get("stripe-version")
    if version is None:
        return API_VERSION
    if not _VERSION.match(version):
        raise bad_request(f"Invalid Stripe API version: {version}")
    return version


# --- parameters and routing ----------------------------------------------------------------


async def read_params(request: Request) -> dict[str, Any]:
    # The raw query string, as `request.url.query` would give it without building the URL.
    pairs = query_pairs(request.scope["query_string"].decode())
    if request.method == "POST":
        body = (await request.body()).decode("utf-8", errors="replace")
        pairs += query_pairs(body)
    return decode(pairs)


def find_route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    for candidate in ROUTES:
        if candidate.method != method:
            continue
        match = candidate.pattern.match(path)
        if match:
            return candidate, match.groupdict()
    raise unrecognized_url(method, path)


def _fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    canonical = json.dumps([method, path, params], sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(store: Store, scope: tuple[str, str], fingerprint: str) -> IdempotentResult | None:
    previous = store.idempotency.get(scope)
    if previous is None:
        return None
    if previous.fingerprint != fingerprint:
        raise StripeError(
            400,
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{scope[1]}' if you meant to execute "
            "a different request.",
            type_=IDEMPOTENCY_ERROR,
        )
    return previous


def run(
    store: Store, method: str, path: str, data: dict[str, Any], info: RequestInfo, api_key: str
) -> tuple[int, bytes, dict[str, str]]:
    """Route and run one API call; returns (status, body, extra headers)."""
    found, path_ids = find_route(method, path)
    key = info.idempotency_key if method == "POST" else None
    if key is not None and len(key) > 255:
        raise invalid("Idempotency-Key", "Idempotency keys can be at most 255 characters long.")
    with store.lock:
        scope = (api_key, key or "")
        fingerprint = _fingerprint(method, path, data) if key else ""
        if key is not None:
            previous = _replay(store, scope, fingerprint)
            if previous is not None:
                return previous.status, previous.body, {"Idempotent-Replayed": "true"}
        expansions = data.pop("expand", None)
        params = Params(data)
        store.request = info
        try:
            body = found.handler(Call(store, params, path_ids, info, expansions is not None))
        finally:
            store.request = None
        if isinstance(body, bytes):
            assert expansions is None, "a handler returned bytes for a request with expand[]"
            encoded = body
        else:
            if expansions is not None:
                paths = expansions if isinstance(expansions, list) else [expansions]
                body = expand(store, body, paths)
            encoded = dumps(body)
        if key is not None:
            store.idempotency[scope] = IdempotentResult(
                fingerprint, 200, encoded, store.clock.now()
            )
        return 200, encoded, {}


def _path(request: Request) -> str:
    """`request.url.path`, without building the URL."""
    path: str = request.scope["path"]
    return path.replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")


def _base_url(request: Request) -> Callable[[], str]:
    """The request's base URL, computed only if a handler asks (for session URLs)."""
    return lambda: str(request.base_url).rstrip("/")


async def handle_v1(request: Request) -> Response:
    store: Store = request.app.state.emulator
    request_id = ids.new_id("req")
    headers = {"Request-Id": request_id}
    try:
        api_key = authenticate(request, request.app.state.api_key)
        headers["Stripe-Version"] = api_version(request)
        data = await read_params(request)
        key = request.headers.get("idempotency-key")
        if key is not None and request.method == "POST":
            headers["Idempotency-Key"] = key
        info = RequestInfo(request_id, key, request.app.state.public_url or _base_url(request))
        status, body, extra = run(store, request.method, _path(request), data, info, api_key)
    except StripeError as error:
        return error_response(error, headers)
    return Response(body, status, headers={**headers, **extra}, media_type="application/json")


# --- helpers shared by handlers ----------------------------------------------------------


@dataclass
class ListArgs:
    limit: int
    starting_after: str | None
    ending_before: str | None


def list_args(p: Params) -> ListArgs:
    limit = p.integer("limit")
    if limit is not None and not 1 <= limit <= 100:
        bound = "greater than or equal to 1" if limit < 1 else "less than or equal to 100"
        raise invalid("limit", f"This value must be {bound} (it currently is '{limit}').")
    after = p.string("starting_after") or None
    before = p.string("ending_before") or None
    if after and before:
        raise StripeError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    return ListArgs(10 if limit is None else limit, after, before)


def created_range(p: Params, key: str = "created") -> tuple[int | None, int | None]:
    """`created` (an int, or gt/gte/lt/lte) as a half-open range [gte, lt)."""
    if not p.has(key):
        return None, None
    if isinstance(p.raw(key), str):
        exact = p.integer(key)
        return (None, None) if exact is None else (exact, exact + 1)
    bounds = p.hash(key)
    assert bounds is not None
    gte: int | None = None
    lt: int | None = None
    for name in ("gt", "gte", "lt", "lte"):
        value = bounds.integer(name)
        if value is None:
            continue
        if name in ("gt", "gte"):
            low = value + 1 if name == "gt" else value
            gte = low if gte is None else max(gte, low)
        else:
            high = value + 1 if name == "lte" else value
            lt = high if lt is None else min(lt, high)
    return gte, lt


def list_table(
    table: Table[Any],
    args: ListArgs,
    url: str,
    render: Callable[[Any], Json],
    keep: Callable[[Any], bool] | None = None,
    positions: Positions | None = None,
) -> Json:
    """One page of a table, newest first; `positions` restricts it (e.g. one customer's)."""
    order = table.order
    after = order.cursor(args.starting_after, table.kind, "starting_after")
    before = order.cursor(args.ending_before, table.kind, "ending_before")
    rows, ids_ = table.rows, order.ids

    gone = table.gone

    def keep_position(position: int) -> bool:
        object_id = ids_[position]
        return object_id not in gone and (keep is None or keep(rows[object_id]))

    seq = range(len(order)) if positions is None else positions
    found, has_more = page_positions(
        [seq], 0, len(order), after=after, before=before, limit=args.limit, keep=keep_position
    )
    return list_object([render(rows[ids_[position]]) for position in found], has_more, url)
