"""A test receiver of `billing.state.updated`: a real HTTP server that verifies every delivery
with the `standardwebhooks` library and answers what the test tells it to."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

NOTIFY_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Receiver:
    url: str = ""
    status: int = 200  # what it answers
    hang_seconds: float = 0.0  # how long it waits before answering
    trickle_seconds: float = 0.0  # how long its answer's body takes, a byte every 0.5 s
    verified: list[dict[str, Any]] = field(default_factory=list)  # bodies, in arrival order
    message_ids: list[str] = field(default_factory=list)
    requests: int = 0
    rejected: int = 0  # deliveries whose signature did not verify
    lock: threading.Lock = field(default_factory=threading.Lock)

    def documents(self, github_user_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            docs = [body["data"] for body in self.verified]
        return [d for d in docs if github_user_id is None or d["github_user_id"] == github_user_id]

    def wait_for(self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check(self.documents()):
            assert time.monotonic() < deadline, f"timed out; received {self.documents()}"
            time.sleep(0.02)


@contextmanager
def receiver(secret: str = NOTIFY_SECRET) -> Iterator[Receiver]:
    state = Receiver()
    webhook = Webhook(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with state.lock:
                state.requests += 1
                status, hang, trickle = state.status, state.hang_seconds, state.trickle_seconds
            if hang:
                time.sleep(hang)
            if 200 <= status < 300:
                try:
                    payload = webhook.verify(body, dict(self.headers.items()))
                except Exception:
                    with state.lock:
                        state.rejected += 1
                    status = 400
                else:
                    assert payload == json.loads(body)
                    with state.lock:
                        state.verified.append(payload)
                        state.message_ids.append(self.headers["webhook-id"])
            self.send_response(status)
            self.send_header("content-length", str(int(trickle * 2)))
            self.end_headers()
            for _ in range(int(trickle * 2)):
                time.sleep(0.5)
                self.wfile.write(b" ")
                self.wfile.flush()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/billing"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
