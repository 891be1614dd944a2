"""Stripe-shaped random identifiers.

Stripe ids are a prefix plus random base62 characters; they are NOT ordered, and code that
consumes them (the service's reconciler) must never compare them. We therefore make them fully
random rather than time-based, so that any accidental ordering assumption fails fast in tests.
"""

from __future__ import annotations

import os
import random

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Random bytes -> base62 characters by table lookup (byte % 62): ~10x faster than
# random.choices, and the slight bias is irrelevant for ids.
_TABLE = bytes(ALPHABET.encode()[byte % 62] for byte in range(256))

# Lengths of the random part, copied from real Stripe ids of each kind.
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
}


def random_part(length: int) -> str:
    return os.urandom(length).translate(_TABLE).decode("ascii")


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_part(_LENGTHS.get(prefix, 24))}"


def checkout_session_id() -> str:
    # Real ids look like cs_test_a1YS1URl...: "a1" then 56 more characters.
    return "cs_test_a1" + random_part(56)


def secret(prefix: str = "whsec") -> str:
    return f"{prefix}_{random_part(32)}"


class FastIds:
    """A seedable, non-cryptographic id source for bulk generation."""

    def __init__(self, seed: int | str | None = None) -> None:
        self._bytes = random.Random(seed).randbytes

    def new(self, prefix: str) -> str:
        length = _LENGTHS.get(prefix, 24)
        return f"{prefix}_{self._bytes(length).translate(_TABLE).decode('ascii')}"
