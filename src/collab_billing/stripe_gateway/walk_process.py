"""Walks of the event list in a process of their own, for a deep backlog.

A drain's threads share one GIL: on SQLite the applying thread waited for the reading thread
~30% of a drain, while the machine's second core sat 24-42% idle (docs/benchmarks.md,
thirteenth round). Here a walk (its requests, and decoding each page into `Event` structs:
~8 µs of CPU an event) runs in a worker process, which sends each page back as those structs
in msgpack, cheap to read back (only the fields we use, where a page's JSON is ~2.7 KB an
event), and the page's JSON, which the events keep for their payloads (ties, retries).

The worker is started with `spawn` (`transport.PROCESS_START_METHOD`): a fork of the service,
which has threads, could copy a lock that one of them holds. It takes ~1 s of CPU to start
(a new interpreter imports what it needs), so a walk begins on the calling thread, starts the
worker once it has read START_AFTER_PAGES pages, and goes on in the worker from the page it
reached once the worker is ready; the worker is stopped when the walk ends. So a service
that is not catching up on a deep backlog has no worker, and a short walk pays nothing for
one (started ahead of every drain, its start-up cost a 10k-event drain 28%, fourteenth
round). The worker draws on the gateway's throttle (in shared memory), its
requests are reported to the gateway's observer here, and Stripe's errors are raised here as
the worker met them. The service's death ends it too: its next read or write of the socket
fails.

Pages cross a socket pair with large buffers, read with `recv_into` (`_Channel`), not
multiprocessing's `Connection`: its reads of 64-200 KB at a time, copied through a `BytesIO`,
cost 0.4-0.5 ms of CPU per 300 KB page (~5 µs an event, as much as decoding the JSON);
`_Channel` costs 0.09 ms.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import select
import signal
import socket
import struct
import threading
from collections.abc import Callable, Generator, Sequence
from multiprocessing.process import BaseProcess

import msgspec

from collab_billing.config import Settings
from collab_billing.stripe_gateway.errors import StripeGatewayError
from collab_billing.stripe_gateway.gateway import EventPage, StripeGateway
from collab_billing.stripe_gateway.transport import PROCESS_START_METHOD, Throttle
from collab_billing.stripe_objects import Event, attach_page

log = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 4 << 20  # a few pages: the worker writes one whole while we read
# Pages walked on the calling thread before a worker is started: a backlog's size is not
# known ahead (the newest page's density misjudged the benchmark's 10k backlog as deep), and a
# worker started for a short walk costs its ~1 s of CPU while the drain runs (10k: -28%).
START_AFTER_PAGES = 150


class WalkProcessError(Exception):
    """The worker failed other than by Stripe's error, or ended mid-walk."""


class ProcessWalks:
    """The gateway's `walk_events`, made in a worker process once it is ready."""

    def __init__(self, gateway: StripeGateway, start_after_pages: int = START_AFTER_PAGES) -> None:
        self.gateway = gateway
        self.start_after_pages = start_after_pages
        self._context = multiprocessing.get_context(PROCESS_START_METHOD)
        self._process: BaseProcess | None = None
        self._channel: _Channel | None = None
        self._ready = False
        self._lock = threading.Lock()  # one walk in the worker at a time
        self.pages_from_worker = 0

    def start(self) -> None:
        """Start the worker, unless it runs; it prepares in the background (a long walk starts
        it; started ahead, a walk takes it from its first page once it is ready)."""
        if self._process is not None and self._process.is_alive():
            return
        self.gateway.throttle.share_with_processes()
        ours, theirs = _socket_pair()
        self._channel = _Channel(ours)
        # Only what talking to Stripe needs crosses over: not the admin or webhook secrets.
        settings = self.gateway.settings.model_copy(
            update={"admin_token": None, "stripe_webhook_secret": None}
        )
        self._process = self._context.Process(
            target=_serve,
            args=(settings, self.gateway.throttle, theirs),
            name="collab-billing-walks",
            daemon=True,
        )
        self._ready = False
        try:
            self._process.start()
        except OSError:  # no process to be had: walks go on here, and it is tried again
            log.warning("the walks' worker did not start", exc_info=True)
            self._channel.close()
            self._process = self._channel = None
        finally:
            theirs.close()  # the worker's now: the socket closes with the worker

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()  # it holds nothing but pages no longer wanted
            self._process.join()
        if self._channel is not None:
            self._channel.close()
        self._process = self._channel = None
        self._ready = False

    def walk_events(
        self,
        *,
        types: Sequence[str],
        ending_before: str,
        created_gte: int | None = None,
        created_lt: int | None = None,
    ) -> Generator[EventPage, None, None]:
        """As `StripeGateway.walk_events`: on this thread until the worker takes over."""
        walk = _Walk(tuple(types), ending_before, created_gte, created_lt)
        if not self._lock.acquire(blocking=False):
            yield from self._walk_here(walk, lambda _: False)  # the worker is busy
            return
        try:
            rest: _Walk | None = walk
            if not self.ready():
                rest = yield from self._walk_here(walk, self._hand_over)
            if rest is not None:
                yield from self._walk_in_worker(rest)
        finally:
            self.stop()  # it lives for one deep walk: its memory, and start-up, only then
            self._lock.release()

    def _walk_here(
        self, walk: _Walk, hand_over: Callable[[int], bool]
    ) -> Generator[EventPage, None, _Walk | None]:
        """Walk on this thread; the rest of the walk (None: there is none) once `hand_over`
        (of the number of pages read) says so."""
        pages = walk.pages(self.gateway)
        with contextlib.closing(pages):
            for read, page in enumerate(pages, start=1):
                yield page
                if not page.has_more or not page.events:
                    return None
                if hand_over(read):
                    return msgspec.structs.replace(walk, ending_before=page.events[0].id)
        return None

    def _hand_over(self, pages_read: int) -> bool:
        """Whether the worker takes the walk on now; it is started once the walk is long."""
        if self._process is None and pages_read >= self.start_after_pages:
            self.start()
        return self.ready()

    def _walk_in_worker(self, walk: _Walk) -> Generator[EventPage, None, None]:
        channel, process = self._channel, self._process
        assert channel is not None and process is not None
        channel.send(_ENCODER.encode(walk))
        while True:
            header, body = channel.receive(process)
            page = self._page(_MESSAGE.decode(header), body)
            self.pages_from_worker += 1
            yield page
            if not page.has_more or not page.events:
                return

    def ready(self, timeout: float = 0.0) -> bool:
        """Whether the worker has said it is ready (waiting up to `timeout` seconds for it)."""
        channel, process = self._channel, self._process
        if self._ready or channel is None or process is None:
            return self._ready
        if channel.waiting(timeout):
            channel.receive(process)
            self._ready = True
        return self._ready

    def _page(self, message: _Message, body: bytearray) -> EventPage:
        if self.gateway.observer is not None:
            for operation, outcome in message.requests:
                self.gateway.observer(operation, outcome)
        if message.error is not None:
            error = message.error
            raise StripeGatewayError(error.kind, error.message, error.http_status)
        if message.failure is not None:
            raise WalkProcessError(message.failure)
        return EventPage(attach_page(message.events, body), message.has_more, body)


class _Walk(msgspec.Struct, frozen=True):
    types: tuple[str, ...]
    ending_before: str
    created_gte: int | None
    created_lt: int | None

    def pages(self, gateway: StripeGateway) -> Generator[EventPage, None, None]:
        """This walk, made by `gateway` on the calling thread."""
        return gateway.walk_events(
            types=self.types,
            ending_before=self.ending_before,
            created_gte=self.created_gte,
            created_lt=self.created_lt,
        )


class _Error(msgspec.Struct):
    kind: str
    message: str
    http_status: int | None


class _Message(msgspec.Struct, array_like=True):
    """A page (its JSON follows as the frame's body), or how the walk failed; with the
    requests made for it (operation, outcome)."""

    requests: list[tuple[str, int | str]]
    events: list[Event] = []
    has_more: bool = False
    error: _Error | None = None
    failure: str | None = None


_ENCODER = msgspec.msgpack.Encoder()
_MESSAGE = msgspec.msgpack.Decoder(_Message)
_WALK = msgspec.msgpack.Decoder(_Walk)
_FRAME = struct.Struct("!II")  # the lengths of a frame's header and body


def _socket_pair() -> tuple[socket.socket, socket.socket]:
    pair = socket.socketpair()
    for end in pair:
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    return pair


class _Channel:
    """Frames over a socket: a header and a body, each read once, straight into its buffer."""

    def __init__(self, end: socket.socket) -> None:
        self.end = end

    def send(self, header: bytes, body: bytes | bytearray = b"") -> None:
        parts = [_FRAME.pack(len(header), len(body)), header, body]
        sent = self.end.sendmsg(parts)
        if sent < sum(map(len, parts)):  # cut short (a signal): the rest, copied, in one go
            self.end.sendall(b"".join(parts)[sent:])

    def receive(self, process: BaseProcess | None = None) -> tuple[bytearray, bytearray]:
        lengths = self._exactly(_FRAME.size, process)
        header_length, body_length = _FRAME.unpack(lengths)
        return self._exactly(header_length, process), self._exactly(body_length, process)

    def waiting(self, timeout: float) -> bool:
        return bool(select.select([self.end], [], [], timeout)[0])

    def close(self) -> None:
        self.end.close()

    def _exactly(self, size: int, process: BaseProcess | None) -> bytearray:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = self.end.recv_into(view[received:])
            if count == 0:
                raise _ended(process)
            received += count
        return buffer


def _ended(process: BaseProcess | None) -> Exception:
    if process is None:
        return EOFError()  # the worker's side: the service closed it
    process.join(timeout=1.0)
    return WalkProcessError(f"the walk's worker ended mid-walk (exit code {process.exitcode})")


def _serve(settings: Settings, throttle: Throttle, end: socket.socket) -> None:
    """The worker: say it is ready, then walk as asked until the service goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the service's, which stops us
    requests: list[tuple[str, int | str]] = []
    gateway = StripeGateway(
        settings,
        observer=lambda operation, outcome: requests.append((operation, outcome)),
        throttle=throttle,
    )
    channel = _Channel(end)

    def send(message: _Message, body: bytes | bytearray = b"") -> None:
        channel.send(_ENCODER.encode(message), body)
        requests.clear()

    with contextlib.suppress(EOFError, OSError), contextlib.closing(channel):
        send(_Message(requests))
        while True:
            _walk(gateway, _WALK.decode(channel.receive()[0]), send, requests)


def _walk(
    gateway: StripeGateway,
    walk: _Walk,
    send: Callable[[_Message, bytes | bytearray], None],
    requests: list[tuple[str, int | str]],
) -> None:
    try:
        for page in walk.pages(gateway):
            send(_Message(requests, page.events, page.has_more), page.body)
    except StripeGatewayError as error:
        send(_Message(requests, error=_Error(error.kind, error.message, error.http_status)), b"")
    except Exception as error:  # raised in the service, which logs it
        send(_Message(requests, failure=f"{type(error).__name__}: {error}"), b"")
