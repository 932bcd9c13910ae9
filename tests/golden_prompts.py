"""Every prompt of a few amplified days of a run whose spec has no ``[conditional]``,
as the researcher saw them: the golden file ``tests/data/golden_prompts.json`` was
written by this module running on the code from before the conditional joined the spec
(``python -m tests.golden_prompts``), and ``tests/test_forks.py`` runs it again on
today's code and wants the same bytes. It was written again once, on purpose, when views
began to count tokens with the run's model's counter (the view's budget then counts its
headings, not a fixed 40 tokens, so sub-question views changed); the conditional's
prompts had matched the old file byte for byte up to that change.

It uses only what both versions have: the store, the loop and the scripted model.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord
from loopsim.researcher.prompts import build_probe_prompt
from loopsim.researcher.view import build_view
from loopsim.schemas import parse_spec
from loopsim.testing import amplified_reply, scripted_factory

GOLDEN = Path(__file__).parent / "data" / "golden_prompts.json"
DAYS = 4

# A stored spec as a run created before [conditional] existed holds it: no such section.
SPEC: dict[str, Any] = {
    "persona": {
        "name": "Dr. Test Person",
        "background": "A field ecologist who studies pollinators.",
        "style": "Plain and careful.",
    },
    "charter": {
        "agenda": "Understand how honeybee colonies choose where to forage.",
        "open_questions": ["How do colonies weigh distance against nectar quality?"],
    },
    "time": {"policy": "fixed", "anchor": "2025-06-02"},
    "budget": {"days": 30, "output_tokens_per_day": 400},
    "checkins": {"every_days": 100000, "spot_check_probability": 0.0},
    "digests": {"every_days": 2},
    "subquestions": {"depth": 1, "breadth": 2},
    "babble": {"ideas": 2},
}


def record_prompts(url: str, data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Step a run of ``data`` (:data:`SPEC`) for :data:`DAYS` days on the database at
    ``url``; every model call's messages in order, then a probe's prompt on the final
    view, as the loop builds it."""
    database = dbmod.Database.open(url)
    try:
        factory, _ = scripted_factory([amplified_reply])
        spec = parse_spec(data or SPEC)
        with database.write() as session:
            run_id = Store(session).create_run(spec, name="golden", model="scripted:test").id
        Loop(database, Settings(), factory).run_days(run_id, DAYS)
        with database.read() as session:
            store = Store(session)
            rows = session.query(CallRecord).filter(CallRecord.run_id == run_id)
            calls = [
                {"ordinal": c.ordinal, "role": c.role, "messages": c.messages}
                for c in sorted(rows, key=lambda c: (c.day_id, c.ordinal))
            ]
            date = dt.date(2025, 6, 2)
            view = build_view(store, run_id, spec.charter, date, 3000)
        # The loop passes a spec's conditional, where the spec has one.
        conditional = [spec.conditional] if hasattr(spec, "conditional") else []
        question = "What have you found so far?"
        probe = build_probe_prompt(spec.persona, view, date, question, *conditional)
        return [*calls, {"ordinal": -1, "role": "probe", "messages": probe.as_dicts()}]
    finally:
        database.dispose()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "golden.db")
        dbmod.upgrade(url)
        prompts = record_prompts(url)
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(prompts, indent=1, ensure_ascii=False) + "\n", "utf-8")
    sys.stderr.write(f"{len(prompts)} prompts written to {GOLDEN.name}\n")


if __name__ == "__main__":
    main()
