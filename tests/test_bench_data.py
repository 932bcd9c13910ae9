"""The labelled benchmark sets under benchmarks/data are well formed."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent.parent / "benchmarks" / "data"
FIELDS = ("domain", "persona", "question", "answer", "paraphrase", "contradiction", "off_persona")
# Lists per probe: further faithful paraphrases of "answer" (the stable researcher draws a
# different wording each day) and further answers from the off persona.
LISTS = {"more_paraphrases": 3, "more_off_persona": 2}


def load(name: str) -> list[dict[str, Any]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def texts(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, text) for the question and every answer text of one probe."""
    out = [(f, row[f]) for f in FIELDS[2:]]
    return out + [(f, item) for f in LISTS for item in row.get(f, [])]


@pytest.mark.parametrize("name", ["drift_labelled.jsonl", "drift_heldout.jsonl"])
def test_drift_schema(name: str) -> None:
    for row in load(name):
        assert set(row) == set(FIELDS) | set(LISTS), row
        for field in FIELDS:
            assert isinstance(row[field], str), (field, row)
            assert row[field].strip(), (field, row)
        texts = [normal(row[f]) for f in ("answer", "paraphrase", "contradiction", "off_persona")]
        assert len(set(texts)) == 4, row["question"]
        assert normal(row["paraphrase"]) != normal(row["answer"])


@pytest.mark.parametrize("name", ["drift_labelled.jsonl", "drift_heldout.jsonl"])
def test_drift_more_variants(name: str) -> None:
    for row in load(name):
        base = {normal(row[f]) for f in ("answer", "paraphrase", "contradiction", "off_persona")}
        seen: set[str] = set()
        for field, count in LISTS.items():
            items = row[field]
            assert isinstance(items, list), (field, row["question"])
            assert len(items) == count, (field, row["question"])
            for item in items:
                assert isinstance(item, str), (field, row["question"])
                assert item.strip(), (field, row["question"])
                key = normal(item)
                assert key not in base, (field, item)
                assert key not in seen, (field, item)
                seen.add(key)


def test_drift_counts() -> None:
    main = load("drift_labelled.jsonl")
    domains = Counter(row["domain"] for row in main)
    assert len(main) >= 66
    assert len(domains) >= 3, domains
    assert all(n >= 22 for n in domains.values()), domains
    # One persona line per domain, so persona A is the same voice throughout.
    for domain in domains:
        assert len({row["persona"] for row in main if row["domain"] == domain}) == 1
    assert len({normal(row["question"]) for row in main}) == len(main)


def test_heldout_is_separate() -> None:
    main, heldout = load("drift_labelled.jsonl"), load("drift_heldout.jsonl")
    assert len(heldout) >= 18
    seen = {normal(text) for row in main for _, text in texts(row)}
    for row in heldout:
        for field, text in texts(row):
            assert normal(text) not in seen, (field, row["question"])


def test_future_leak_schema() -> None:
    path = DATA / "future_leak.jsonl"
    if not path.exists():
        pytest.skip("future_leak.jsonl not written yet")
    rows = load("future_leak.jsonl")
    assert len(rows) >= 80
    for row in rows:
        assert set(row) == {"text", "external", "leak"}, row
        assert isinstance(row["leak"], bool)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["external"])
    assert len({row["text"] for row in rows}) == len(rows)
    labels = Counter(row["leak"] for row in rows)
    assert labels[True] >= 20
    assert labels[False] >= 20
