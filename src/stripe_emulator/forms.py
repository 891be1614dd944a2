"""Decoding of Stripe's form-encoded parameters, and typed access to them.

Why our own decoder: Stripe encodes nested parameters with brackets (`metadata[k]=v`,
`items[0][price]=p`, `expand[]=x`, `created[gte]=1`), the way Rack/PHP do. Starlette's form
parser (python-multipart) returns the flat key strings ("items[0][price]") and knows nothing
about nesting, so we parse the raw `application/x-www-form-urlencoded` body (and the query
string, which the SDK uses for GET) as `urllib.parse.parse_qsl` does and build the nested
structure here. Lists: `a[]` appends, `a[0]` indexes (the official SDKs always send indexes).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from stripe_emulator.errors import StripeError, bad_request, invalid, missing, unknown

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_SEGMENT = re.compile(r"\[([^\[\]]*)\]")

# Keys under these names are free-form maps: never turn `metadata[0]=x` into a list.
_MAP_KEYS = frozenset({"metadata"})


def query_pairs(encoded: str) -> list[tuple[str, str]]:
    """`parse_qsl(encoded, keep_blank_values=True)`, each `key=value` decoded once: clients
    send the same parameters again and again (a poll's twelve `types[n]` on every page), and
    decoding them was a quarter of the CPU of a small `GET /v1/events`."""
    return [_pair(part) for part in encoded.split("&") if part]


@functools.lru_cache(maxsize=4096)
def _pair(part: str) -> tuple[str, str]:
    key, _, value = part.partition("=")
    return unquote_plus(key, errors="replace"), unquote_plus(value, errors="replace")


@functools.lru_cache(maxsize=4096)
def split_key(key: str) -> tuple[str, ...]:
    match = _KEY.match(key)
    if match is None:
        raise bad_request(f"Invalid parameter name: {key}")
    return (match.group(1), *_SEGMENT.findall(match.group(2)))


def decode(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for key, value in pairs:
        _insert(root, split_key(key), value, key)
    result = _listify(root, None)
    assert isinstance(result, dict)
    return result


def _insert(node: dict[str, Any], parts: tuple[str, ...], value: str, full_key: str) -> None:
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        # `a[]` appends: number the entries as they arrive; `_listify` makes the list.
        key = str(len(node)) if part == "" else part
        if last:
            if isinstance(node.get(key), dict):
                raise bad_request(f"Invalid parameters: {full_key} is both a value and a hash")
            node[key] = value
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise bad_request(f"Invalid parameters: {full_key} is both a value and a hash")
        node = child


def _listify(node: Any, name: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _listify(value, key) for key, value in node.items()}
    if name not in _MAP_KEYS and converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


_TRUE = {"true": True, "false": False}


class Params:
    """Typed, consumption-tracked access to decoded parameters.

    Every accessor marks its key as used; `finish()` then rejects whatever the handler did not
    read with Stripe's `parameter_unknown` error, so each endpoint's accepted parameters are
    exactly the ones its handler reads.
    """

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self._data = data
        self._prefix = prefix
        self._used: set[str] = set()
        self._children: list[Params] = []

    def name(self, key: str) -> str:
        return f"{self._prefix}[{key}]" if self._prefix else key

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> Any:
        self._used.add(key)
        return self._data.get(key)

    def ignore(self, *keys: str) -> None:
        """Accept parameters that Stripe knows but that the emulator does not model."""
        self._used.update(keys)

    def string(
        self,
        key: str,
        *,
        required: bool = False,
        choices: Iterable[str] | None = None,
        max_length: int = 5000,
    ) -> str | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise missing(self.name(key))
            return None
        if not isinstance(value, str):
            raise invalid(self.name(key), f"Invalid string: {self.name(key)} must be a string")
        if required and value == "":
            raise invalid(
                self.name(key),
                f"You passed an empty string for '{self.name(key)}'. We assume empty values are "
                "an attempt to unset a parameter; however '"
                f"{self.name(key)}' cannot be unset. You should remove '{self.name(key)}' from "
                "your request or supply a non-empty value.",
                code="parameter_invalid_empty",
            )
        if len(value) > max_length:
            raise invalid(self.name(key), f"Invalid string: {self.name(key)} is too long")
        if choices is not None and value not in set(choices):
            allowed = ", ".join(f"`{choice}`" for choice in choices)
            raise invalid(self.name(key), f"Invalid {self.name(key)}: must be one of {allowed}")
        return value

    def integer(
        self, key: str, *, required: bool = False, minimum: int | None = None
    ) -> int | None:
        value = self.string(key, required=required)
        if value is None or value == "":
            return None
        try:
            number = int(value)
        except ValueError:
            raise invalid(
                self.name(key),
                f"Invalid integer: {value}",
                code="parameter_invalid_integer",
            ) from None
        if minimum is not None and number < minimum:
            raise invalid(self.name(key), f"Invalid {self.name(key)}: must be at least {minimum}")
        return number

    def boolean(self, key: str) -> bool | None:
        value = self.string(key)
        if value is None:
            return None
        if value not in _TRUE:
            raise invalid(self.name(key), f"Invalid boolean: {value}")
        return _TRUE[value]

    def hash(self, key: str, *, required: bool = False) -> Params | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise missing(self.name(key))
            return None
        if not isinstance(value, dict):
            raise invalid(self.name(key), f"Invalid object: {self.name(key)} must be a hash")
        child = Params(value, self.name(key))
        self._children.append(child)
        return child

    def array(self, key: str, *, required: bool = False) -> list[Any] | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise missing(self.name(key))
            return None
        if isinstance(value, str):
            return [value] if value != "" else []
        if isinstance(value, dict):
            raise invalid(self.name(key), f"Invalid array: {self.name(key)} must be an array")
        return list(value)

    def dicts(self, key: str, *, required: bool = False) -> list[Params] | None:
        values = self.array(key, required=required)
        if values is None:
            return None
        children = []
        for index, value in enumerate(values):
            if not isinstance(value, dict):
                raise invalid(f"{self.name(key)}[{index}]", "Invalid object")
            child = Params(value, f"{self.name(key)}[{index}]")
            self._children.append(child)
            children.append(child)
        return children

    def metadata(self, key: str = "metadata") -> dict[str, str | None] | None:
        """Metadata changes: a value of None means "unset this key" (Stripe's empty string).

        `metadata=` (an empty string) unsets every key; it is returned as {"*": None}.
        """
        value = self.raw(key)
        if value is None:
            return None
        if value == "":
            return {"*": None}
        if not isinstance(value, dict):
            raise invalid(self.name(key), "Invalid metadata: must be a hash of strings")
        changes: dict[str, str | None] = {}
        for meta_key, meta_value in value.items():
            if not isinstance(meta_value, str):
                raise invalid(f"{self.name(key)}[{meta_key}]", "Metadata values must be strings")
            if len(meta_key) > 40:
                raise invalid(
                    f"{self.name(key)}[{meta_key}]",
                    "Metadata keys can have up to 40 characters",
                )
            if len(meta_value) > 500:
                raise invalid(
                    f"{self.name(key)}[{meta_key}]",
                    "Metadata values can have up to 500 characters",
                )
            changes[meta_key] = meta_value or None
        return changes

    def finish(self) -> None:
        for key in sorted(self._data):
            if key not in self._used:
                raise unknown(self.name(key))
        for child in self._children:
            child.finish()


def apply_metadata(
    current: dict[str, str], changes: dict[str, str | None] | None
) -> dict[str, str]:
    """Return new metadata after Stripe-style changes (never mutates `current`)."""
    if changes is None:
        return current
    result = {} if "*" in changes and changes["*"] is None else dict(current)
    for key, value in changes.items():
        if key == "*" and value is None:
            continue
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    if len(result) > 50:
        raise StripeError(400, "You can specify up to 50 keys in metadata.", param="metadata")
    return result
