"""Every rule for untrusted text, and small rules for the words loopsim prints.

A model's reply, an endpoint's error and a human's answer are all untrusted: they may
hold terminal escape sequences, control characters, NUL bytes or lone surrogates. Each
place that prints, stores or judges such text takes its rule from here, so the rules can
be read (and tightened) side by side:

- :func:`safe_text`: for a terminal or a document. Escape sequences and control
  characters are dropped; newlines and tabs are kept.
- :func:`storable`: for every database backend. NUL (PostgreSQL refuses it) and lone
  surrogates (no driver encodes them as UTF-8) become U+FFFD.
- :func:`loggable`: for a log line or a stored error. Control characters (but tab and
  newline), NUL and lone surrogates become U+FFFD.
- :func:`inert_json`: JSON that a terminal cannot act on.
- :func:`excerpt`: an endpoint's error body cut to one short line for a message, an
  HTML error page first reduced to its words.
- :func:`whole_sentences`: a text cut to a limit at a sentence's end.
- :func:`names_a_folder`: an output path, as typed, that names a folder.
- :func:`failure`, :func:`day_failed`: a failed try in words, "failed" said once.
- :data:`NON_PROSE_CONTROL`: what makes a reply degenerate rather than prose.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any, TypeGuard

# C0 controls but tab and newline, DEL, and the C1 controls (a terminal's 8-bit CSI, OSC,
# DCS and friends). Carriage returns are in it: safe_text turns them into newlines first.
_C0_C1 = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_SURROGATES = "\ud800-\udfff"

TERMINAL_CONTROL = re.compile(f"[{_C0_C1}]")
"""A control character that :func:`safe_text` drops."""

# Whole terminal escape sequences, so none leaves its parameters behind as text:
# CSI (colours, cursor moves), terminated strings (OSC titles and links, DCS, SOS, PM,
# APC) and the two-byte escapes. A string with no terminator loses its introducer only,
# so a stray one cannot hide the text after it.
TERMINAL_ESCAPE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)"
    r"|\x1b[ -/]*[0-~]"
)

UNSTORABLE = re.compile(f"[\x00{_SURROGATES}]")
"""What no backend stores: NUL and lone surrogates (JSON can spell both)."""

UNLOGGABLE = re.compile(f"[{_C0_C1}{_SURROGATES}]")
"""What a log line or a stored error must not hold: controls (but tab and newline), NUL
and lone surrogates."""

DEL_AND_C1 = re.compile("[\x7f-\x9f]")
"""The controls ``json.dumps`` leaves raw (it escapes C0 ones itself)."""

NON_PROSE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""A C0 control other than tab, newline and carriage return, or DEL: prose has none."""


def safe_text(text: str) -> str:
    """Drop terminal escape sequences and other control characters; keep newlines and
    tabs."""
    text = TERMINAL_ESCAPE.sub("", text)
    return TERMINAL_CONTROL.sub("", text.replace("\r\n", "\n")).replace("\r", "\n")


def storable(text: str) -> str:
    """Text safe for every backend: NUL bytes (PostgreSQL refuses them) and lone
    surrogates (no driver can encode them as UTF-8; an endpoint's JSON can hold half a
    pair) replaced with U+FFFD."""
    return UNSTORABLE.sub("\ufffd", text)


def loggable(text: str) -> str:
    """Text fit for a log line and the record: control characters (but tab and newline),
    NUL and lone surrogates replaced with U+FFFD."""
    return UNLOGGABLE.sub("\ufffd", text)


def inert_json(value: Any, **options: Any) -> str:
    """``json.dumps``, with DEL and C1 controls (a terminal's CSI, OSC, DCS) escaped as
    JSON escapes C0 ones: the same value comes back, and no terminal acts on the text."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return DEL_AND_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


EXCERPT_CHARS = 200
"""The most characters of an endpoint's error body an error message quotes."""

_HTML_PAGE = re.compile(r"<(?:!doctype\s+html|html|head|body|title)\b", re.IGNORECASE)
# Each ends at its close or at the end of the text: an unclosed one is not looked for
# again from every later "<", which would take time quadratic in a hostile body.
_HTML_UNREAD = re.compile(
    r"<(script|style)\b.*?(?:</\1\s*>|\Z)|<!--.*?(?:-->|\Z)", re.IGNORECASE | re.DOTALL
)
_HTML_TAG = re.compile(r"<[^>]*(?:>|\Z)")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """An endpoint's error body as one line of at most ``limit`` characters: runs of
    whitespace become one space, and past the limit the text is cut at a word, with an
    ellipsis. An HTML page (a proxy's or a web server's error page) is reduced to the
    words a browser would show: its tags, comments, scripts and styles dropped."""
    if _HTML_PAGE.search(text):
        text = html.unescape(_HTML_TAG.sub(" ", _HTML_UNREAD.sub(" ", text)))
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:  # a word boundary, unless it would lose half the room
        cut = cut[:space]
    return cut.rstrip() + "\u2026"


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s)|\n")


def whole_sentences(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters; else its sentences that do, if they
    are at least half of it (a model asked for a few sentences that ran on past its
    limit said them first); else ``text`` as it is, for the caller to refuse."""
    if len(text) <= limit:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, limit + 1)]
    return text[: ends[-1]].rstrip() if ends and ends[-1] >= limit // 2 else text


def plural(count: int, one: str, many: str | None = None) -> str:
    """``1 day``, ``2 days``; ``many`` for words that do not just take an s."""
    return f"{count} {one if count == 1 else (many or one + 's')}"


_MODEL_FAILED = r"model \S+ failed"
"""How the error of a model that stayed down begins: it says it failed itself."""


def failure(attempts: int, error: str | None) -> str:
    """What a failed try says: ``failed after N attempts: ERROR``, or the error alone
    when it says that already. A model that stays down is stored as ``model M failed
    after N attempts: ...`` (``model M failed: ...`` after one), and prefixed again it
    read ``failed after 5 attempts: model M failed after 5 attempts: ...``."""
    text = error or ""
    tried = f"failed after {plural(attempts, 'attempt')}"
    after = tried.removeprefix("failed") if attempts > 1 else ""
    if re.match(rf"{_MODEL_FAILED}{after}:", text):
        return text
    return f"{tried}: {text}"


def day_failed(index: int, error: str | None) -> str:
    """``day N failed: ERROR``, or ``day N: ERROR`` when the error says it failed already
    (``model M failed after 3 attempts: ...``), not "failed" twice."""
    text = error or ""
    return (
        f"day {index}: {text}" if re.match(_MODEL_FAILED, text) else f"day {index} failed: {text}"
    )


_SEPARATORS = tuple(sep for sep in (os.sep, os.altsep) if sep)


def names_a_folder(given: str | Path) -> TypeGuard[str]:
    """Whether an output path as typed ends in a separator: ``out/new/`` names a folder,
    not a file ``new`` to write in ``out`` (a ``Path`` has dropped the slash already)."""
    return isinstance(given, str) and given.endswith(_SEPARATORS)
