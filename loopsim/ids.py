"""Time-ordered identifiers.

A run id is a ULID-style string: 48 bits of milliseconds then 80 random bits, in
Crockford base32, so ids sort by creation time and can be typed back by a unique prefix.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
LENGTH = 26


def new_id(now_ms: int | None = None) -> str:
    """Return a 26-character, lexicographically time-ordered id."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | secrets.randbits(80)
    chars = []
    for _ in range(LENGTH):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
