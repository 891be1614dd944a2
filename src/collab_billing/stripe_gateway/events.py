"""Stripe events as the service reads them: a typed header, and the event's own JSON.

A page of `GET /v1/events` is decoded into each event's `id`, `type` and `created`, keeping
its JSON as a `msgspec.Raw` slice of the page: the object is decoded by the mirror module of
its type into the fields it uses (`object_as`), and the whole payload parsed only where it is
needed (same-second ties, retries). So a page held costs about its JSON's size in memory,
a fraction of what dicts would.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T")

# Stripe's `created` is a Unix second. Anything outside these bounds is not an event of ours
# (a signed payload with `created: 2**63` would otherwise hold a row's watermark forever).
MIN_CREATED = 1_262_304_000  # 2010-01-01, before Stripe's Events API
MAX_CREATED = 2**32


class EventShapeError(ValueError):
    """The JSON is not a Stripe event (or page of events) as documented."""


class Ref(msgspec.Struct):
    """An expanded object where an id is expected (`customer`, `price`)."""

    id: str


def id_of(value: str | Ref) -> str:
    return value if isinstance(value, str) else value.id


class _Header(msgspec.Struct):
    id: str
    type: str
    created: int


class _Page(msgspec.Struct):
    data: list[msgspec.Raw]
    has_more: bool


class _Data(msgspec.Struct, Generic[T]):
    object: T


class _Envelope(msgspec.Struct, Generic[T]):
    data: _Data[T]


class Event:
    """One event: `id`, `type`, `created`, and its JSON for the object and the payload."""

    __slots__ = ("_decoded", "_payload", "created", "id", "raw", "type")

    def __init__(self, header: _Header, raw: bytes | msgspec.Raw) -> None:
        if not MIN_CREATED <= header.created < MAX_CREATED:
            raise EventShapeError(f"event {header.id}: created {header.created} is out of range")
        self.id = header.id
        self.type = header.type
        self.created = header.created
        self.raw = raw
        self._payload: dict[str, Any] | None = None
        self._decoded: tuple[type[Any], Any] | None = None  # the last `object_as`

    def __repr__(self) -> str:
        return f"Event({self.id!r}, {self.type!r}, {self.created})"

    @classmethod
    def from_json(cls, body: bytes) -> Event:
        try:
            return cls(_HEADER.decode(body), body)
        except msgspec.DecodeError as error:  # names the field, never a value
            raise EventShapeError(f"not a Stripe event: {error}") from None

    @classmethod
    def from_dict(cls, event: dict[str, Any]) -> Event:
        return cls.from_json(msgspec.json.encode(event))

    def object_as(self, object_type: type[T]) -> T:
        """`data.object` decoded as `object_type` (raises `EventShapeError` if it does not fit)."""
        if self._decoded is not None and self._decoded[0] is object_type:
            decoded: T = self._decoded[1]
            return decoded
        try:
            envelope: _Envelope[T] = _envelope_decoder(object_type).decode(self.raw)
        except msgspec.DecodeError as error:
            raise EventShapeError(f"event {self.id}: {error}") from None
        self._decoded = (object_type, envelope.data.object)
        return envelope.data.object

    @property
    def payload(self) -> dict[str, Any]:
        """The whole event as plain JSON values, parsed on first use."""
        if self._payload is None:
            self._payload = msgspec.json.decode(self.raw)
        return self._payload


class EventPage(msgspec.Struct):
    events: list[Event]
    has_more: bool


def decode_event_page(body: bytes) -> EventPage:
    """A page of `/v1/events` (newest first). The events' objects are decoded later, by type:
    one malformed object fails its own event, not the page."""
    try:
        page = _PAGE.decode(body)
        return EventPage([Event(_HEADER.decode(raw), raw) for raw in page.data], page.has_more)
    except msgspec.DecodeError as error:
        raise EventShapeError(f"unexpected event list: {error}") from None


def decode_object(body: bytes, object_type: type[T]) -> T:
    """One object as read from Stripe (`GET /v1/subscriptions/{id}`)."""
    try:
        return msgspec.json.decode(body, type=object_type)
    except msgspec.DecodeError as error:
        raise EventShapeError(f"unexpected {object_type.__name__}: {error}") from None


def decode_list_page(body: bytes) -> tuple[list[msgspec.Raw], bool]:
    """A page of a list endpoint: each object's JSON, and whether there are more."""
    try:
        page = _PAGE.decode(body)
    except msgspec.DecodeError as error:
        raise EventShapeError(f"unexpected list: {error}") from None
    return page.data, page.has_more


def _envelope_decoder(object_type: type[T]) -> msgspec.json.Decoder[_Envelope[T]]:
    """One decoder per object type, made on first use: `msgspec.json.decode(raw, type=...)`
    looks the type up again on every call, a decoder once."""
    decoder = _ENVELOPE_DECODERS.get(object_type)
    if decoder is None:
        decoder = msgspec.json.Decoder(_Envelope[object_type])  # type: ignore[valid-type]
        _ENVELOPE_DECODERS[object_type] = decoder
    return decoder


_ENVELOPE_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


_HEADER = msgspec.json.Decoder(_Header)
_PAGE = msgspec.json.Decoder(_Page)
