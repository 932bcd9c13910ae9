"""Time-ordered identifiers, and the content hashes that name what was written.

A run id is a ULID-style string: 48 bits of milliseconds then 80 random bits, in
Crockford base32, so ids sort by creation time and can be typed back by a unique prefix.

:func:`canonical_json` is the one byte form every hash covers (the record's chain, a
prompt's hash): changing a byte of it changes every hash of every record written.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

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


def canonical_json(value: Any) -> bytes:
    """``value`` as JSON with sorted keys, no spaces and characters as written, in UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
