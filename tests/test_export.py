"""Exports treat every entry as hostile text."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import update

from loopsim.config import Settings
from loopsim.exports.calls import calls_jsonl
from loopsim.exports.markdown import md_block, md_inline, to_jsonl, to_markdown
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import Day
from loopsim.researcher.conversation import Logged
from loopsim.schemas import DayStatus, Decision, parse_spec
from loopsim.testing import add_day, default_reply, report_json, scripted_factory
from tests.conftest import make_run

HOSTILE_BODY = (
    "Fine start.\n# Fake heading\n```\ncode fence\n```\n<script>alert(1)</script>\n"
    "[link](javascript:alert(2))\n---\n| table | row |"
)


def test_markdown_quotes_every_line_of_hostile_text():
    block = md_block(HOSTILE_BODY)
    assert all(line.startswith("> ") for line in block.splitlines())
    assert "<script>" not in block
    assert "&lt;script&gt;" in block
    assert "\n# " not in block
    assert "```" not in block
    assert "[link](" not in block
    assert r"\[link\]" in block


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
    assert "<img" not in md
    assert "<script>" not in md
    assert "\n# Fake heading" not in md
    entry = next(json.loads(line) for line in lines if '"type": "entry"' in line)
    assert entry["body"] == HOSTILE_BODY  # JSON keeps the exact text; escaping is JSON's
    assert all("\n" not in line for line in lines)


DOCS = Path(__file__).parent.parent / "docs" / "export.md"


def documented_fields() -> dict[str, set[str]]:
    """The fields docs/export.md lists for each JSONL record type (text in parentheses
    names values, not fields); a check-in's pair fields come under ``pairs``."""
    fields: dict[str, set[str]] = {}
    for paragraph in DOCS.read_text(encoding="utf-8").split("\n\n"):
        found = re.match(r'`type: "(\w+)"`:', paragraph)
        if not found:
            continue
        text = re.sub(r"\([^)]*\)", "", paragraph[found.end() :].replace("\n", " "))
        head, _, pairs = text.partition("`pairs`: a list of")
        fields[found.group(1)] = set(re.findall(r"`([a-z_]+)`", head)) | {"schema", "type"}
        if pairs:
            fields[found.group(1)].add("pairs")
            fields["pair"] = set(re.findall(r"`([a-z_]+)`", pairs))
    return fields


def test_jsonl_records_carry_exactly_the_documented_fields(database, spec):
    from loopsim.checkin.decision import decide
    from loopsim.schemas import Decision

    data = spec.model_dump(mode="json")
    data["checkins"] = {"every_days": 1, "spot_check_probability": 0.0, "probes_per_checkin": 1}
    data["probes"] = ["What decides where a colony forages?"]
    run_id = make_run(database, parse_spec(data))
    factory, _ = scripted_factory([default_reply])
    loop = Loop(database, Settings(), factory)
    loop.run_days(run_id, 1)
    assert loop.opened_checkin is not None
    decide(database, loop.opened_checkin, Decision.AMEND, note="Count foragers.")
    with database.read() as session:
        store = Store(session)
        records = [json.loads(x) for x in to_jsonl(store, store.get_run(run_id))]
    docs = documented_fields()
    assert set(docs) == {"run", "day", "entry", "checkin", "pair"}
    seen = {r["type"] for r in records}
    assert seen == {"run", "day", "entry", "checkin"}
    for record in records:
        assert record["schema"] == "loopsim.export/1"
        assert set(record) == docs[record["type"]], record["type"]
        for pair in record.get("pairs", []):
            assert set(pair) == docs["pair"]


def amplified_run(database, days: int, **sections) -> str:
    """A run of ``days`` amplified days: sub-questions, babbled ideas and digests."""
    from loopsim.testing import amplified_reply
    from tests.conftest import SPEC

    spec = {
        **SPEC,
        "subquestions": {"depth": 1, "breadth": 1},
        "babble": {"ideas": 2},
        "digests": {"every_days": 2},
        **sections,
    }
    run_id = make_run(database, parse_spec(spec))
    factory, _ = scripted_factory([amplified_reply])
    Loop(database, Settings(), factory).run_days(run_id, days)
    return run_id


def test_every_hash_can_be_recomputed_from_the_jsonl_export(database):
    """Sub-question trees, critiques and digests included: the export carries every
    hashed field, so a reader can verify the chain without the database."""
    import datetime as dt

    from loopsim.record.store import entry_hash
    from loopsim.record.tables import Entry

    run_id = amplified_run(database, days=5, subquestions={"depth": 2, "breadth": 2})
    with database.read() as session:
        store = Store(session)
        records = [json.loads(x) for x in to_jsonl(store, store.get_run(run_id))]
    entries = [r for r in records if r["type"] == "entry"]
    by_seq = {r["seq"]: r for r in entries}
    assert any(r["parent_seq"] for r in entries)
    assert any(r["level"] for r in entries)
    assert any(r["score"] is not None for r in entries)
    for r in entries:
        if r["parent_seq"] is not None:
            assert by_seq[r["parent_seq"]]["day_index"] == r["day_index"]
        fields = {k: r[k] for k in r if k in Entry.__table__.columns and k != "hash"}
        fields["external_date"] = dt.date.fromisoformat(r["external_date"])
        fields["created_at"] = dt.datetime.fromisoformat(r["created_at"])
        assert entry_hash(Entry(**fields), r["day_index"]) == r["hash"], r["seq"]


def test_markdown_shows_the_tree_scores_flags_and_digests(database):
    run_id = amplified_run(database, days=3, babble={"ideas": 2, "flag_top": 1, "min_score": 0})
    with database.read() as session:
        store = Store(session)
        md = to_markdown(store, store.get_run(run_id))
        entries = [e for e, _, _ in store.list_entries(run_id)]
    seq = {e.id: e.seq for e in entries}
    answer = next(e for e in entries if e.kind == "answer")
    assert f"### #{answer.seq} answer: " in md
    assert f"(re #{seq[answer.parent_id]})" in md
    critique = next(e for e in entries if e.kind == "critique")
    assert f"re #{seq[critique.parent_id]}; score {critique.score}/10)" in md
    assert md.count("flagged)") == sum(bool(e.flagged) for e in entries) > 0
    assert "(level 1, days 1-2)" in md


def test_markdown_header_says_what_the_run_is_without_needless_escapes(database, spec):
    """The demo report's header: a title naming the run and its persona, ids as code
    (no backslashes in `gemma3-270m` or `q4_k_m`), and the status as it really stands."""
    with database.write() as session:
        run_id = Store(session).create_run(spec, name="my_demo-1", model="llamacpp:gemma3-270m").id
    factory, _ = scripted_factory([default_reply])
    Loop(database, Settings(), factory).run_days(run_id, 2)
    with database.read() as session:
        store = Store(session)
        md = to_markdown(store, store.get_run(run_id))
    head = md.split("## Charter")[0]
    assert head.splitlines()[0] == r"# loopsim run my\_demo\-1: Dr. Test Person"
    assert f"- run: `{run_id}`" in head
    assert "- model: `llamacpp:gemma3-270m`" in head
    assert "- status: running; 2 of 30 days committed; driven by `run step`" in head
    day_line = next(ln for ln in md.splitlines() if ln.startswith("*model "))
    assert "\\" not in day_line


def rejected_run(database, spec) -> str:
    """Days 1-13, where check-in 2 rejected days 4-6 and check-in 4 days 10-12; day 10
    failed three times before it committed."""
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        for index in range(1, 14):
            if index == 10:
                for attempt in range(3):
                    add_day(store, run_id, 10, status=DayStatus.FAILED, error=f"down {attempt}")
            add_day(store, run_id, index, [EntryInput("note", f"Note {index}", "Looked.")])
            if index % 3 == 0 and index < 13:
                checkin = store.add_checkin(
                    run_id,
                    "scheduled",
                    first_day=index - 2,
                    last_day=index,
                    detail=None,
                    predictions=[],
                )
                decision = Decision.REJECT if index in (6, 12) else Decision.APPROVE
                store.claim_decision(
                    checkin.id,
                    decision=decision,
                    note=None,
                    decided_at=checkin.opened_at,
                    drift_score=None,
                )
                if decision == Decision.REJECT:
                    store.revert_days(run_id, index - 3, index)
    return run_id


def test_markdown_names_the_reverted_days_it_leaves_out(database, spec):
    """The failed tries of a reverted day went with it: shown alone under day 10, they
    said day 10 never succeeded. Each stretch of reverted days is named where it stood."""
    run_id = rejected_run(database, spec)
    with database.read() as session:
        store = Store(session)
        md = to_markdown(store, store.get_run(run_id))
        ids = [c.id for c in store.list_checkins(run_id)]
    headings = [line for line in md.splitlines() if line.startswith("## Day")]
    assert headings == [
        "## Day 1: 2025-06-02",
        "## Day 2: 2025-06-02",
        "## Day 3: 2025-06-02",
        f"## Days 4\u20136: reverted at check-in {ids[1]} (not shown; "
        "`--include-reverted` shows them)",
        "## Day 7: 2025-06-02",
        "## Day 8: 2025-06-02",
        "## Day 9: 2025-06-02",
        f"## Days 10\u201312: reverted at check-in {ids[3]} (not shown, nor 3 failed tries "
        "of them; `--include-reverted` shows them)",
        "## Day 13: 2025-06-02",
    ]
    with database.read() as session:
        store = Store(session)
        every = to_markdown(store, store.get_run(run_id), include_reverted=True)
    shown = [line for line in every.splitlines() if line.startswith("## Day")]
    assert len(shown) == 16
    assert "not shown" not in every
    assert shown[9:13] == ["## Day 10: 2025-06-02 (a failed try)"] * 3 + [
        "## Day 10: 2025-06-02 (reverted)"
    ]


def _failed_calls(store: Store, run_id: str, index: int) -> None:
    """A failed try of ``index`` with the one call it made, refused."""
    call = Logged(
        0, "day", 0, 1, [{"role": "user", "content": "q"}], "no", False, "bad", "v", 1, 1, 5
    )
    store.add_calls(add_day(store, run_id, index, status=DayStatus.FAILED, error="bad"), [call], [])


def test_jsonl_names_the_reverted_days_it_leaves_out_as_markdown_does(database, spec):
    """The failed tries of day 10 were listed alone as day lines (and their calls) with
    day 10 itself left out: to a program they said day 10 never succeeded. They go with
    their reverted day now, and each reverted stretch is one line where it stood."""
    run_id = rejected_run(database, spec)
    with database.write() as session:
        _failed_calls(Store(session), run_id, 14)  # a failed try after the stretches stays
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        ids = [c.id for c in store.list_checkins(run_id)]
        lines = [json.loads(x) for x in to_jsonl(store, run)]
        every = [json.loads(x) for x in to_jsonl(store, run, include_reverted=True)]
    shown = [
        (x["type"], x.get("index", x.get("first_day")))
        for x in lines
        if x["type"] not in ("entry", "checkin")
    ]
    assert shown == [
        ("run", None),
        *[("day", i) for i in (1, 2, 3)],
        ("reverted", 4),
        *[("day", i) for i in (7, 8, 9)],
        ("reverted", 10),
        ("day", 13),
        ("day", 14),
    ]
    stretches = [x for x in lines if x["type"] == "reverted"]
    assert stretches == [
        {
            "schema": "loopsim.export/1",
            "type": "reverted",
            "run_id": run_id,
            "first_day": 4,
            "last_day": 6,
            "checkin_id": ids[1],
            "failed_tries": 0,
        },
        {
            "schema": "loopsim.export/1",
            "type": "reverted",
            "run_id": run_id,
            "first_day": 10,
            "last_day": 12,
            "checkin_id": ids[3],
            "failed_tries": 3,
        },
    ]
    assert not any(x["type"] == "day" and 10 <= x["index"] <= 12 for x in lines)
    # With --include-reverted every day line is there, and no stretch stands for them.
    days = [(x["index"], x["status"]) for x in every if x["type"] == "day"]
    assert days.count((10, "failed")) == 3
    assert (10, "reverted") in days
    assert (14, "failed") in days
    assert not any(x["type"] == "reverted" for x in every)


def test_jsonl_calls_of_a_reverted_days_failed_tries_go_with_it(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        _failed_calls(store, run_id, 1)
        add_day(store, run_id, 1, [EntryInput("note", "Note", "Looked.")])
        store.revert_days(run_id, 0, 1)
        _failed_calls(store, run_id, 2)
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        kept = [json.loads(x)["day_index"] for x in calls_jsonl(store, run)]
        every = [json.loads(x)["day_index"] for x in calls_jsonl(store, run, include_reverted=True)]
    assert kept == [2]
    assert every == [1, 2]


def test_markdown_names_reverted_days_at_the_end_of_the_record(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        add_day(store, run_id, 1, [EntryInput("note", "Note", "Looked.")])
        add_day(store, run_id, 2, [EntryInput("note", "Note", "Looked.")])
        store.revert_days(run_id, 1, 2)  # no check-in in the record says which
    with database.read() as session:
        store = Store(session)
        md = to_markdown(store, store.get_run(run_id))
    assert "## Day 2: reverted (not shown; `--include-reverted` shows it)\n" in md
    assert md.index("## Day 1:") < md.index("## Day 2: reverted")


DOWN = "model openai:stub failed after 5 attempts: nothing answers at http://127.0.0.1:9"


def test_a_failed_try_says_failed_after_n_attempts_once(cli_factory, sqlite_url, spec):
    """A model that stayed down is stored saying so; it was prefixed again, to read
    "Failed after 5 attempts: model openai:stub failed after 5 attempts: ...". An error
    that does not say it (one from an older version, or an invalid reply) keeps the
    prefix, as does one that counts other attempts than the day's."""
    database = dbmod.Database.open(sqlite_url)
    run_id = make_run(database, spec)
    tries = [
        (5, DOWN),
        (1, "model openai:stub failed: HTTP 400: bad request"),
        (1, "the reply was not JSON"),
        (7, DOWN),
    ]
    with database.write() as session:
        store = Store(session)
        for attempts, error in tries:
            day = add_day(store, run_id, 1, status=DayStatus.FAILED, error=error)
            session.execute(update(Day).where(Day.id == day.id).values(attempts=attempts))
    with database.read() as session:
        store = Store(session)
        md = to_markdown(store, store.get_run(run_id))
    database.dispose()
    said = [
        "Model openai:stub failed after 5 attempts: nothing answers at http://127.0.0.1:9",
        "Model openai:stub failed: HTTP 400: bad request",
        "Failed after 1 attempt: the reply was not JSON",
        f"Failed after 7 attempts: {DOWN}",
    ]
    assert [md_inline(line) for line in said] == [
        line for line in md.splitlines() if "ailed" in line and not line.startswith("#")
    ]
    shown = cli_factory(sqlite_url, None)("record", "show", run_id).stdout
    assert [line for line in shown.splitlines() if line] == [
        f"day 1  {line[0].lower()}{line[1:]}" for line in said
    ]
