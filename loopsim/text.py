"""Small rules for the words loopsim prints."""

from __future__ import annotations


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 day``, ``2 days``; ``many`` for words that do not just take an s."""
    return f"{count} {one if count == 1 else (many or one + 's')}"
