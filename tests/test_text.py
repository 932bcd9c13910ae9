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


def test_whole_sentences_cuts_at_the_last_sentence_end_within_the_limit():
    from loopsim.text import whole_sentences

    assert whole_sentences("Short. Fits.", 20) == "Short. Fits."
    text = "One sentence here. Two sentences here! A third? " + "More words " * 10
    assert whole_sentences(text, 60) == "One sentence here. Two sentences here! A third?"
    assert whole_sentences('He said "stop." Then he left.', 22) == 'He said "stop."'
    # Version numbers and the like end no sentence: no space follows their dot.
    assert whole_sentences("Use version 2.5 now. " + "x" * 40, 30) == "Use version 2.5 now."
    # Nothing to cut at, or too little left: the text as it was, for the caller to refuse.
    assert whole_sentences("x" * 50, 20) == "x" * 50
    assert whole_sentences("Hi. " + "x" * 50, 40) == "Hi. " + "x" * 50
