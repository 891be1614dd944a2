"""`GET /billing/subscriptions?github_user_id=N`, the hot read, answered beside FastAPI.

The route is declared in `api.billing` (OpenAPI, validation, every error answer). For the plain
case (exactly that path and query, a canonical decimal id in range, the right admin token, a
known user) this middleware answers first with the same document through the same functions,
without FastAPI's routing, dependency solving and exception middleware, about 40% of the
request's CPU time. Anything else (a bad or missing token, any other query string, an unknown
user) goes on to FastAPI, which answers exactly as it would have: this layer never makes an
error answer of its own. Our outer middlewares (request ids, body limit) apply to both.
"""

from __future__ import annotations

import re

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from collab_billing.api.billing import subscriptions_document
from collab_billing.api.deps import token_matches
from collab_billing.api.responses import JSONBytes
from collab_billing.api.schemas import MAX_JSON_SAFE_INTEGER
from collab_billing.db import queries

PATH = "/billing/subscriptions"
# Only the canonical spelling; "007", "+7", "7.0", percent-escapes and extra parameters are
# FastAPI's to parse (it accepts some of them, with its own rules).
_PLAIN_QUERY = re.compile(rb"github_user_id=([1-9][0-9]{0,15})")


class SubscriptionsFastPath:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == PATH
            and scope["method"] == "GET"
            and not scope.get("root_path")
        ):
            match = _PLAIN_QUERY.fullmatch(scope["query_string"])
            github_user_id = int(match[1]) if match else 0
            if 0 < github_user_id <= MAX_JSON_SAFE_INTEGER and self._authorized(scope):
                rows = queries.read_user_subscriptions(
                    self.state.user_subscriptions_read, github_user_id
                )
                if rows is not None:
                    document = subscriptions_document(github_user_id, rows)
                    await JSONBytes(document)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":  # the first one, as Starlette's `headers.get`
                return bool(value) and token_matches(value.decode("latin-1"), self.state.settings)
        return False
