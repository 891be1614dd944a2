"""Stripe's events and objects as the service reads them: typed structs of only the fields it
uses, decoded straight from the response bytes by msgspec.

A page of 100 events is about 270 KB of JSON. Parsing all of it into dicts cost ~25 µs of CPU
an event (orjson), more than applying it; decoding into these structs, skipping what is not
named here, costs ~6 µs. An event's `data` stays raw JSON: its object's fields are decoded on
first use, and the whole payload is parsed only where it is needed (same-second ties, whose
`previous_attributes` are compared with whole objects, and events kept for a retry).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import msgspec
import orjson


class Ref(msgspec.Struct):
    """An expanded object where an id is expected (`customer`, `price`)."""

    id: str


class SubscriptionItem(msgspec.Struct):
    price: str | Ref | None = None
    current_period_end: int | None = None


class ItemList(msgspec.Struct):
    data: list[SubscriptionItem] = []


class ObjectFields(msgspec.Struct):
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


class _Data(msgspec.Struct):
    object: ObjectFields


class Event(msgspec.Struct, dict=True):
    """A Stripe event; `dict=True` lets the decoded parts be cached on it."""

    id: str
    type: str
    created: int
    data: msgspec.Raw

    @property
    def object(self) -> ObjectFields:
        """The fields we read of `data.object`, decoded on first use."""
        # Cached by hand: functools.cached_property takes a lock on every first access
        # (Python 3.11), which cost as much as the decoding.
        cached: ObjectFields | None = self.__dict__.get("_object")
        if cached is None:
            cached = self.__dict__["_object"] = _DATA.decode(self.data).object
        return cached

    @cached_property
    def payload(self) -> dict[str, Any]:
        """The whole event as plain JSON values."""
        return {
            "id": self.id,
            "object": "event",
            "type": self.type,
            "created": self.created,
            "data": orjson.loads(memoryview(self.data)),
        }

    @classmethod
    def from_json(cls, body: bytes) -> Event:
        return _EVENT.decode(body)

    @classmethod
    def from_dict(cls, event: dict[str, Any]) -> Event:
        return _EVENT.decode(orjson.dumps(event))


class EventList(msgspec.Struct):
    data: list[Event]
    has_more: bool


_DATA = msgspec.json.Decoder(_Data)
_EVENT = msgspec.json.Decoder(Event)
EVENT_LIST = msgspec.json.Decoder(EventList)

DecodeError = msgspec.DecodeError  # also raised for a value of the wrong type (ValidationError)
