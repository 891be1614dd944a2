"""Stripe-shaped identifiers.

Stripe's newer ids (events, subscriptions, prices, invoices, ...) are "1" and five base62
characters counting seconds, ten characters naming the account, then eight random ones:
fixtures3.json's `evt_1Pgc76B7WZ01zgkWwyRHS12y` was made a few seconds after its
`sub_1Pgc6rB7WZ01zgkWNy0Cn5nw`. We make them the same way, because how ids spread over an
index is part of what the benchmarks measure. They are still NOT ordered: ids of one second
are in random order, an id counts the wall clock's seconds while `created` follows the
emulator's clock, and older kinds (customers, products, subscription items) are random
throughout. Code that consumes them must never compare them.
"""

from __future__ import annotations

import os
import random
import time

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Random bytes -> base62 characters by table lookup (byte % 62): ~10x faster than
# random.choices, and the slight bias is irrelevant for ids.
_TABLE = bytes(ALPHABET.encode()[byte % 62] for byte in range(256))

# Lengths of the part after the prefix, copied from real Stripe ids of each kind.
_LENGTHS = {
    "cus": 14,
    "prod": 14,
    "si": 14,
    "sub": 24,
    "price": 24,
    "evt": 24,
    "bps": 24,
    "bpc": 24,
    "req": 14,
    "we": 24,
    "in": 24,
    "li": 24,
}
# The kinds whose ids start with the second they were made (as in fixtures3.json).
_TIMED = frozenset({"sub", "price", "evt", "bps", "bpc", "we", "in", "li"})
# Seconds of Stripe's id clock are Unix seconds minus this: it dates fixtures3.json's ids
# to July 2024, when they were made (the exact origin does not matter, only the order).
ID_EPOCH = 426_256_548
_TIME_CHARS, _ACCOUNT_CHARS = 6, 10


def random_part(length: int) -> str:
    return os.urandom(length).translate(_TABLE).decode("ascii")


def base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits))


def id_seconds(stripe_id: str) -> int | None:
    """The Unix second a timed id was made in; None for the kinds that carry no time."""
    prefix, _, rest = stripe_id.rpartition("_")
    if prefix not in _TIMED or len(rest) != 24:
        return None
    number = 0
    for char in rest[:_TIME_CHARS]:
        number = number * 62 + ALPHABET.index(char)
    return number + ID_EPOCH


class _Ids:
    """Ids of this emulator's account (one process is one Stripe account), from os.urandom."""

    account = random_part(_ACCOUNT_CHARS)

    def random_chars(self, length: int) -> str:
        return random_part(length)

    def new(self, prefix: str, at: float | None = None) -> str:
        """A new id of this kind; a timed kind counts `at`'s second (default: now, as Stripe)."""
        length = _LENGTHS.get(prefix, 24)
        if prefix not in _TIMED:
            return f"{prefix}_{self.random_chars(length)}"
        second = int(time.time() if at is None else at) - ID_EPOCH
        random_chars = self.random_chars(length - _TIME_CHARS - _ACCOUNT_CHARS)
        return f"{prefix}_{base62(second, _TIME_CHARS)}{self.account}{random_chars}"


_IDS = _Ids()
new_id = _IDS.new


def checkout_session_id() -> str:
    # Real ids look like cs_test_a1YS1URl...: "a1" then 56 more characters.
    return "cs_test_a1" + random_part(56)


def secret(prefix: str = "whsec") -> str:
    return f"{prefix}_{random_part(32)}"


class FastIds(_Ids):
    """A seedable, non-cryptographic id source for bulk generation."""

    def __init__(self, seed: int | str | None = None) -> None:
        self._bytes = random.Random(seed).randbytes

    def random_chars(self, length: int) -> str:
        return self._bytes(length).translate(_TABLE).decode("ascii")
