"""The rules for untrusted text, side by side: what each one lets through."""

from __future__ import annotations

import json

from loopsim.text import EXCERPT_CHARS, excerpt, inert_json, loggable, safe_text, storable

HOSTILE = "a\x1b]0;title\x07b\x1b[31mc\x00d\x9b2Je\r\nf\tg\ud800h\x7f"


def test_safe_text_drops_escapes_and_controls_but_keeps_lines_and_tabs():
    assert safe_text(HOSTILE) == "abcde\nf\tg\ud800h"


def test_storable_only_replaces_what_no_database_stores():
    assert storable(HOSTILE) == HOSTILE.replace("\x00", "\ufffd").replace("\ud800", "\ufffd")


def test_loggable_leaves_no_control_character_but_tab_and_newline_and_no_surrogate():
    out = loggable(HOSTILE)
    assert out.encode("utf-8")
    assert not any((ord(c) < 0x20 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F for c in out)
    assert out.startswith("a\ufffd]0;title\ufffdb")
    assert "\nf\tg" in out


def test_inert_json_escapes_del_and_c1_and_round_trips():
    value = {"t": "x\x9b31my\x7f"}
    text = inert_json(value)
    assert "\x9b" not in text
    assert "\x7f" not in text
    assert json.loads(text) == value


def test_excerpt_keeps_an_error_body_to_one_short_line():
    assert excerpt("  upstream\n\ttimed   out ") == "upstream timed out"
    long = excerpt("word " * 100)
    assert len(long) <= EXCERPT_CHARS
    assert long.endswith("word\u2026")
    page = "<html><head><script>var x = '<b>';</script></head><body><p>Bad &lt;gateway&gt;</p>"
    assert excerpt(page) == "Bad <gateway>"
    assert excerpt("a < b and c > d") == "a < b and c > d"  # not HTML: left as written
