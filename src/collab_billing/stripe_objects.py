"""Stripe's events and objects as the service reads them: typed structs of only the fields it
uses, decoded straight from the response bytes by msgspec.

A page of 100 events is about 270 KB of JSON. Parsing all of it into dicts cost ~25 µs of CPU
an event (orjson), more than applying it; decoding into these structs, skipping what is not
named here, costs ~6 µs. Each event keeps a reference to the JSON it came in: the whole
payload is parsed only where it is needed (same-second ties, whose `previous_attributes` are
compared with whole objects, and events kept for a retry).

The structs are not tracked by the cyclic garbage collector (`gc=False`): they form trees,
never cycles, and a drain's collections (`reconcile.memory`) walked the tens of thousands
of them in flight, 14 ms a collection at a million events.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson


class Ref(msgspec.Struct, gc=False):
    """An expanded object where an id is expected (`customer`, `price`)."""

    id: str


class SubscriptionItem(msgspec.Struct, gc=False):
    price: str | Ref | None = None
    current_period_end: int | None = None


class ItemList(msgspec.Struct, gc=False):
    data: list[SubscriptionItem] = []


class ObjectFields(msgspec.Struct, gc=False):
    """The fields the service reads of a customer, a subscription or a Checkout Session."""

    id: str | None = None
    customer: str | Ref | None = None
    status: str | None = None
    cancel_at_period_end: bool | None = None
    cancel_at: int | None = None
    canceled_at: int | None = None
    current_period_end: int | None = None  # before API 2025-03-31; now on the items
    items: ItemList | None = None
    metadata: dict[str, Any] | None = None
    client_reference_id: str | None = None
    deleted: bool | None = None

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ObjectFields:
        """From an object read through the gateway as a plain dict."""
        return msgspec.convert(obj, cls)


def id_of(value: str | Ref) -> str:
    return value if isinstance(value, str) else value.id


class _Data(msgspec.Struct, gc=False):
    object: ObjectFields


class Event(msgspec.Struct, dict=True):
    """A Stripe event with the fields we read; `dict=True` lets it keep a reference to the
    JSON it came in (for `payload`)."""

    id: str
    type: str
    created: int
    data: _Data | None  # None: its object is not the shape Stripe documents

    @property
    def object(self) -> ObjectFields:
        if self.data is None:
            raise DecodeError(self.__dict__.get("_error", "no data.object"))
        return self.data.object

    @property
    def payload(self) -> dict[str, Any]:
        """The whole event as plain JSON values, parsed on first use from the JSON it came in."""
        cached: dict[str, Any] | None = self.__dict__.get("_payload")
        if cached is None:
            source: _Source = self.__dict__["_source"]
            cached = self.__dict__["_payload"] = source.event(self.id)
        return cached

    @classmethod
    def from_json(cls, body: bytes) -> Event:
        event = _decode_one(body)
        event.__dict__["_source"] = _Source(body, page=False)
        return event

    @classmethod
    def from_dict(cls, event: dict[str, Any]) -> Event:
        return cls.from_json(orjson.dumps(event))


class EventList(msgspec.Struct, gc=False):
    data: list[Event]
    has_more: bool


def decode_event_list(body: bytes) -> EventList:
    """A page of `/v1/events`. One event whose object is not the shape we expect does not
    fail the page: it is decoded alone, and fails (and waits) alone in the applier."""
    try:
        page = _EVENT_LIST.decode(body)
    except msgspec.ValidationError:
        raw = _RAW_LIST.decode(body)
        page = EventList([_decode_one(item) for item in raw.data], raw.has_more)
    source = _Source(body, page=True)
    for event in page.data:
        event.__dict__["_source"] = source
    return page


def attach_page(events: list[Event], body: bytes | bytearray) -> list[Event]:
    """`events`, decoded elsewhere from the page `body` (and sent here as structs by
    `walk_process`), given that page as their source again, as `decode_event_list` does."""
    source = _Source(body, page=True)
    for event in events:
        event.__dict__["_source"] = source
        if event.data is None:
            event.__dict__["_error"] = _decode_one(source.raw(event.id)).__dict__.get("_error")
    return events


class _Header(msgspec.Struct, gc=False):
    id: str
    type: str
    created: int


class _RawList(msgspec.Struct, gc=False):
    data: list[msgspec.Raw]
    has_more: bool


class _Source:
    """The JSON that events were decoded from: a page, or one event (webhook, retry)."""

    def __init__(self, body: bytes | bytearray, page: bool) -> None:
        self.body = body
        self.page = page
        self._raw: dict[str, msgspec.Raw] | None = None

    def event(self, event_id: str) -> dict[str, Any]:
        if not self.page:
            parsed: dict[str, Any] = orjson.loads(self.body)
            return parsed
        parsed = orjson.loads(memoryview(self.raw(event_id)))
        return parsed

    def raw(self, event_id: str) -> msgspec.Raw:
        if self._raw is None:  # a tie or a retry in this page: its events, still unparsed
            items = _RAW_LIST.decode(self.body).data
            self._raw = {_HEADER.decode(item).id: item for item in items}
        return self._raw[event_id]


def _decode_one(body: bytes | msgspec.Raw) -> Event:
    try:
        return _EVENT.decode(body)
    except msgspec.ValidationError as error:
        header = _HEADER.decode(body)
        event = Event(header.id, header.type, header.created, None)
        event.__dict__["_error"] = str(error)
        return event


_EVENT = msgspec.json.Decoder(Event)
_EVENT_LIST = msgspec.json.Decoder(EventList)
_HEADER = msgspec.json.Decoder(_Header)
_RAW_LIST = msgspec.json.Decoder(_RawList)

DecodeError = msgspec.DecodeError  # also raised for a value of the wrong type (ValidationError)
