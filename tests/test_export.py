"""Exports treat every entry as hostile text."""

from __future__ import annotations

import json

from loopsim.config import Settings
from loopsim.export import md_block, md_inline, to_jsonl, to_markdown
from loopsim.loop import Loop
from loopsim.store import Store
from loopsim.testing import report_json, scripted_factory
from tests.conftest import make_run

HOSTILE_BODY = (
    "Fine start.\n# Fake heading\n```\ncode fence\n```\n<script>alert(1)</script>\n"
    "[link](javascript:alert(2))\n---\n| table | row |"
)


def test_markdown_quotes_every_line_of_hostile_text():
    block = md_block(HOSTILE_BODY)
    assert all(line.startswith("> ") for line in block.splitlines())
    assert "<script>" not in block and "&lt;script&gt;" in block
    assert "\n# " not in block and "```" not in block
    assert "[link](" not in block and r"\[link\]" in block


def test_inline_text_cannot_open_structure():
    assert md_inline("# title\nwith <b>html</b> and `code`") == (
        r"\# title with &lt;b&gt;html&lt;/b&gt; and \`code\`"
    )


def test_exports_of_a_run_with_hostile_entries(database, spec):
    run_id = make_run(database, spec)
    reply = report_json(("note", "A <img src=x onerror=alert(1)> title", HOSTILE_BODY))
    factory, _ = scripted_factory([reply])
    Loop(database, Settings(), factory).run_days(run_id, 1)
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        md = to_markdown(store, run)
        lines = list(to_jsonl(store, run))
    assert "<img" not in md and "<script>" not in md
    assert "\n# Fake heading" not in md
    entry = [json.loads(line) for line in lines if '"type": "entry"' in line][0]
    assert entry["body"] == HOSTILE_BODY  # JSON keeps the exact text; escaping is JSON's
    assert all("\n" not in line for line in lines)
