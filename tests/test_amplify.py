"""Amplification inside a day: sub-question trees, babble and prune, hierarchical digests,
and the calls recorded for distillation. Real databases, scripted model at the seam."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import DigestState, EntryInput, Store
from loopsim.record.tables import CallRecord, Entry
from loopsim.researcher.view import build_view
from loopsim.schemas import Author, DayStatus, EntryKind, RunSpec, parse_spec
from loopsim.testing import DIGEST_ASKED, amplified_reply, default_reply, scripted_factory
from tests.conftest import SPEC, make_run


@pytest.fixture
def database(any_db: Database) -> Database:
    return any_db


def amplified(**sections: Any) -> RunSpec:
    return parse_spec({**SPEC, **sections})


def loop_for(database: Database, script=(amplified_reply,), **settings: Any):
    factory, model = scripted_factory(script)
    return Loop(database, Settings(**settings), factory), model


def entries(database: Database, run_id: str) -> list[Entry]:
    with database.read() as session:
        return [e for e, _, _ in Store(session).list_entries(run_id)]


def calls(database: Database, run_id: str) -> list[CallRecord]:
    with database.read() as session:
        rows = session.scalars(
            select(CallRecord).where(CallRecord.run_id == run_id).order_by(CallRecord.id)
        )
        return list(rows)


def depth_of(entry: Entry, by_id: dict[int, Entry]) -> int:
    depth = 0
    while entry.parent_id is not None:
        entry = by_id[entry.parent_id]
        if entry.kind == EntryKind.SUBQUESTION:
            depth += 1
    return depth + 1


def test_sub_question_tree_respects_depth_and_breadth(database):
    spec = amplified(subquestions={"depth": 2, "breadth": 2, "token_budget": 100_000})
    run_id = make_run(database, spec)
    loop, model = loop_for(database)
    result = loop.step(run_id)
    assert result is not None
    assert result.status == DayStatus.COMMITTED

    rows = entries(database, run_id)
    by_id = {e.id: e for e in rows}
    questions = [e for e in rows if e.kind == EntryKind.SUBQUESTION]
    answers = [e for e in rows if e.kind == EntryKind.ANSWER]
    # The model always offers 3; breadth 2 at depth 1, then 2 under each answer at depth 2,
    # and nothing below the depth limit though every sub-answer offered 3 more.
    assert sorted(depth_of(q, by_id) for q in questions) == [1, 1, 2, 2, 2, 2]
    assert len(answers) == 6
    for answer in answers:
        assert by_id[answer.parent_id].kind == EntryKind.SUBQUESTION
    for question in questions:
        if question.parent_id is not None:
            assert by_id[question.parent_id].kind == EntryKind.ANSWER
    # Every node belongs to the day, in one hash chain.
    assert {e.day_id for e in rows} == {rows[0].day_id}
    with database.read() as session:
        assert Store(session).verify_chain(run_id).ok

    # Sub-researchers at the depth limit are not offered sub-questions at all.
    sub_systems = [m[0].text for m in model.calls if "hands you the question" in m[0].text]
    assert len(sub_systems) == 6
    assert sum('"subquestions"' in s for s in sub_systems) == 2
    # Each sub-researcher saw a view focused on its own question, and no memory.
    first_sub = next(m for m in model.calls if "hands you the question" in m[0].text)
    assert len(first_sub) == 2
    assert "Question: How far do foragers fly for rich nectar?" in first_sub[-1].text


def test_each_call_is_recorded_with_what_it_saw_and_returned(database):
    spec = amplified(subquestions={"depth": 1, "breadth": 2})
    run_id = make_run(database, spec)
    loop, model = loop_for(database)
    loop.step(run_id)
    recorded = calls(database, run_id)
    assert [c.role for c in recorded] == ["day", "subquestion", "subquestion"]
    assert [c.ordinal for c in recorded] == [1, 2, 3]
    for call, sent in zip(recorded, model.calls, strict=True):
        assert [m["content"] for m in call.messages] == [m.text for m in sent]
        assert call.accepted
        assert call.error is None
    by_seq = {e.seq: e for e in entries(database, run_id)}
    for call in recorded[1:]:
        assert by_seq[call.entry_seq].kind == EntryKind.ANSWER
        assert by_seq[call.entry_seq].body in call.reply


def test_retries_and_their_feedback_are_recorded(database, spec):
    run_id = make_run(database, spec)
    loop, _ = loop_for(database, ["not json at all", amplified_reply])
    loop.step(run_id)
    first, second = calls(database, run_id)
    assert (first.attempt, first.accepted, second.attempt, second.accepted) == (1, False, 2, True)
    assert first.task == second.task == 0
    assert first.error
    assert second.messages[-2] == {"role": "assistant", "content": "not json at all"}
    assert "That reply was not valid" in second.messages[-1]["content"]


def test_token_budget_leaves_later_sub_questions_unanswered(database):
    spec = amplified(subquestions={"depth": 1, "breadth": 3, "token_budget": 100})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.step(run_id)
    rows = entries(database, run_id)
    assert len([e for e in rows if e.kind == EntryKind.SUBQUESTION]) == 3
    assert len([e for e in rows if e.kind == EntryKind.ANSWER]) == 1


def test_a_dead_endpoint_leaves_a_sub_question_unanswered_not_the_day_failed(database):
    spec = amplified(subquestions={"depth": 1, "breadth": 2})
    run_id = make_run(database, spec)
    down = httpx.ConnectError("connection refused")
    loop, _ = loop_for(database, [amplified_reply, down, amplified_reply], model_retries=0)
    result = loop.step(run_id)
    assert result is not None
    assert result.status == DayStatus.COMMITTED
    kinds = [e.kind for e in entries(database, run_id)]
    assert kinds.count(EntryKind.SUBQUESTION) == 2
    assert kinds.count(EntryKind.ANSWER) == 1


def test_the_tree_commits_with_its_day_or_not_at_all(database):
    spec = amplified(subquestions={"depth": 2, "breadth": 2})
    run_id = make_run(database, spec)
    crash = KeyboardInterrupt()  # Ctrl-C, or any stop, after part of the tree was answered
    loop, _ = loop_for(database, [amplified_reply, amplified_reply, crash])
    with pytest.raises(KeyboardInterrupt):
        loop.step(run_id)
    assert entries(database, run_id) == []
    assert calls(database, run_id) == []
    with database.read() as session:
        assert Store(session).list_days(run_id) == []


def test_babble_each_idea_gets_a_critique_and_the_best_is_flagged(database):
    spec = amplified(babble={"ideas": 3, "flag_top": 1, "min_score": 0})
    run_id = make_run(database, spec)
    loop, model = loop_for(database)
    loop.step(run_id)
    rows = entries(database, run_id)
    ideas = [e for e in rows if e.kind == EntryKind.IDEA]
    critiques = [e for e in rows if e.kind == EntryKind.CRITIQUE]
    assert len(ideas) == 3
    assert sorted(c.parent_id for c in critiques) == sorted(i.id for i in ideas)
    score = {c.parent_id: c.score for c in critiques}
    best = max(ideas, key=lambda i: (score[i.id], -i.seq))
    assert [i.id for i in ideas if i.flagged] == [best.id]
    # The critic is fresh: it sees the charter, the date and one idea, never the log.
    critic = [m for m in model.calls if "careful critic" in m[0].text]
    assert len(critic) == 3
    assert all("Research log" not in m[-1].text and "2025-06-02" in m[-1].text for m in critic)


def test_no_idea_is_flagged_below_the_minimum_score(database):
    spec = amplified(babble={"ideas": 3, "flag_top": 3, "min_score": 11 - 1})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.step(run_id)
    rows = entries(database, run_id)
    scores = {e.parent_id: e.score for e in rows if e.kind == EntryKind.CRITIQUE}
    for idea in (e for e in rows if e.kind == EntryKind.IDEA):
        assert idea.flagged == (scores[idea.id] >= 10)


def test_digests_are_hierarchical_and_the_pinned_part_stays_bounded(database):
    spec = amplified(digests={"every_days": 2}, budget={"days": 40})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.run_days(run_id, 30)
    rows = entries(database, run_id)
    digests = [e for e in rows if e.kind == EntryKind.DIGEST]
    level1 = [(d.first_day, d.last_day) for d in digests if d.level == 1]
    # Days are digested two at a time once both are older than the day at work.
    assert level1 == [(k, k + 1) for k in range(1, 28, 2)]
    level2 = [(d.first_day, d.last_day) for d in digests if d.level == 2]
    assert level2[:3] == [(1, 4), (5, 8), (9, 12)]
    assert any(d.level == 3 for d in digests)
    with database.read() as session:
        store = Store(session)
        pinned = store.pinned_digests(run_id, dt.date(2025, 6, 2))
        view = build_view(store, run_id, spec.charter, dt.date(2025, 6, 2), 800)
        start = view.recent[0].day_index
        before = store.pinned_digests(
            run_id, dt.date(2025, 6, 2), before_day=start, written_by=start
        )
    # Pinned digests tile the digested days once, without gap or overlap.
    days = [day for d in pinned for day in range(d.first_day, d.last_day + 1)]
    assert days == list(range(1, 29))
    assert len(pinned) <= 2 * 4  # below every_days per level, a few levels
    # A small budget: the raw window starts on a digest boundary, and the digests shown
    # tile every day before it, as they stood on the window's first day.
    assert 3 < start <= 29
    days = [day for d in before for day in range(d.first_day, d.last_day + 1)]
    assert days == list(range(1, start))
    assert [d.seq for d in view.digests] == sorted(
        (d.seq for d in before), key=lambda s: next(d.first_day for d in before if d.seq == s)
    )


def test_a_digest_the_model_keeps_failing_is_asked_less_and_less_often(database):
    """A model that cannot write a digest pays its retries on the days that ask for it,
    not on every day: after its n-th failed day the digest waits 2^(n-1) days, at most
    16. The days go on meanwhile, and a model that can write it later gets it written."""
    spec = amplified(digests={"every_days": 2}, budget={"days": 40})
    run_id = make_run(database, spec)
    writes = {"digests": False}

    def reply(messages: list[Any]) -> str:
        if DIGEST_ASKED in messages[0].text and not writes["digests"]:
            return "Sorry, I cannot summarise these entries."
        return default_reply(messages)

    loop, _ = loop_for(database, (reply,), max_retries=1)

    def digest_calls() -> list[tuple[int, bool]]:
        with database.read() as session:
            found = Store(session).run_calls(run_id, roles=["digest"])
            return [(day.index, call.accepted) for call, day in found]

    assert [r.status for r in loop.run_days(run_id, 20)] == [DayStatus.COMMITTED] * 20
    asked = digest_calls()
    # Days 1-2 are due from day 3; a try is the call and its one retry, both rejected.
    assert [index for index, _ in asked] == [3, 3, 4, 4, 6, 6, 10, 10, 18, 18]
    assert not any(accepted for _, accepted in asked)
    writes["digests"] = True
    loop.run_days(run_id, 14)  # days 21-34: the fifth failure (day 18) waits 16 days
    assert [index for index, _ in digest_calls()[len(asked) :]] == [34]
    level1 = [(e.first_day, e.last_day) for e in entries(database, run_id) if e.level == 1]
    assert level1 == [(1, 2)]
    # The digests behind it never failed: one a day, the backlog caught up as before.
    loop.run_days(run_id, 3)
    level1 = [(e.first_day, e.last_day) for e in entries(database, run_id) if e.level == 1]
    assert level1 == [(1, 2), (3, 4), (5, 6), (7, 8)]


def test_the_prompt_only_grows_while_the_window_start_stays(database):
    """Days that keep the window's start only append to the prompt: a digest written
    meanwhile (level 2 compressing level 1 included) waits for the window to move."""
    spec = amplified(digests={"every_days": 2}, budget={"days": 80})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    date = dt.date(2025, 6, 2)
    kept, moved, prev = 0, 0, None
    for _ in range(40):
        loop.step(run_id)
        with database.read() as session:
            view = build_view(Store(session), run_id, spec.charter, date, 900)
        start = view.recent[0].day_index
        if prev is not None and prev[0] == start:
            kept += 1
            assert view.digests == prev[1].digests
            assert view.related == prev[1].related
            old = [e.seq for e in prev[1].recent]
            assert [e.seq for e in view.recent][: len(old)] == old
        elif prev is not None:
            moved += 1
        prev = (start, view)
    assert kept > moved > 0  # the start did move, and most days it did not


def test_a_digest_is_reverted_with_its_day_and_a_human_can_amend_it(database):
    spec = amplified(digests={"every_days": 2}, budget={"days": 40})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.run_days(run_id, 3)  # day 3 digests days 1-2
    date = dt.date(2025, 6, 2)
    with database.write() as session:
        store = Store(session)
        (digest,) = store.pinned_digests(run_id, date)
        assert (digest.first_day, digest.last_day) == (1, 2)
        amended = store.amend_digest(run_id, digest.seq, "Days 1-2, as the human reads them.")
        assert amended.author == Author.HUMAN
        assert amended.parent_id == digest.id
        (shown,) = store.pinned_digests(run_id, date)
        assert shown.body == "Days 1-2, as the human reads them."
        assert store.verify_chain(run_id).ok
        store.revert_days(run_id, 2, 3)
        assert store.pinned_digests(run_id, date) == []


def test_record_show_draws_the_tree(database, cli_factory):
    spec = amplified(subquestions={"depth": 2, "breadth": 1}, babble={"ideas": 2, "min_score": 0})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.step(run_id)
    result = cli_factory(database.url.render_as_string(hide_password=False))(
        "record", "show", run_id
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    sub = next(i for i, line in enumerate(lines) if " subquestion " in line)
    assert lines[sub].startswith("#")
    assert "How far do foragers fly" in lines[sub]
    assert lines[sub + 2].startswith("  #")
    assert " answer " in lines[sub + 2]
    # depth 2: under the depth-1 answer, and its own answer under it
    assert lines[sub + 4].startswith("    #")
    assert " subquestion " in lines[sub + 4]
    assert lines[sub + 6].startswith("      #")
    assert " answer " in lines[sub + 6]
    assert any("critique" in line and "score" in line for line in lines)
    assert any("idea" in line and "flagged" in line for line in lines)


def test_corrections_digests_and_future_entries_in_the_focused_view(database, spec):
    run_id = make_run(database, spec)
    later = dt.date(2025, 7, 1)
    with database.write() as session:
        store = Store(session)
        store.append_entries(
            run_id,
            [EntryInput(EntryKind.CORRECTION, "Use marked bees", "Always mark.", Author.HUMAN)],
            day=None,
            external_date=dt.date(2025, 6, 1),
        )
        store.append_entries(
            run_id,
            [EntryInput("note", "From the future", "Foragers fly nine kilometres in July.")],
            day=None,
            external_date=later,
        )
    with database.read() as session:
        view = build_view(
            Store(session),
            run_id,
            spec.charter,
            dt.date(2025, 6, 2),
            1200,
            focus="How far do foragers fly?",
        )
    text = view.render()
    assert "Use marked bees" in text
    assert "From the future" not in text


def test_amend_digest_from_the_cli(database, cli_factory):
    spec = amplified(digests={"every_days": 2}, budget={"days": 40})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.run_days(run_id, 3)
    digest = next(e for e in entries(database, run_id) if e.kind == EntryKind.DIGEST)
    cli = cli_factory(database.url.render_as_string(hide_password=False))
    result = cli("record", "amend-digest", run_id, str(digest.seq), "--body", "Too short")
    assert result.exit_code == 2
    assert "at least 20 characters" in result.output
    result = cli(
        "record", "amend-digest", run_id, str(digest.seq), "--body", "Days one and two, in short."
    )
    assert result.exit_code == 0, result.output
    missing = cli("record", "amend-digest", run_id, "1", "--body", "Not a digest at all, really.")
    assert missing.exit_code == 1
    assert "has no digest #1" in missing.stderr
    with database.read() as session:
        (shown,) = Store(session).pinned_digests(run_id, dt.date(2025, 6, 2))
    assert shown.body == "Days one and two, in short."
    assert shown.author == Author.HUMAN


def test_the_two_query_tiling_matches_the_level_by_level_one(database, monkeypatch):
    """``digest_state`` answers in two queries what one query per level answered; with an
    amended digest and reverted days in the record, both give the same tiling at every
    point in time."""
    spec = amplified(digests={"every_days": 2}, budget={"days": 60})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.run_days(run_id, 24)
    date = dt.date(2025, 6, 2)
    with database.write() as session:
        store = Store(session)
        first = store.digests(run_id, 1, after_day=0, until=date)[0]
        store.amend_digest(run_id, first.seq, "A human's version of the first two days.")
        store.revert_days(run_id, 17, 24)
    loop.run_days(run_id, 10)

    def tilings() -> list[list[int]]:
        with database.read() as session:
            store = Store(session)
            return [
                [d.seq for d in store.pinned_digests(run_id, date, written_by=day)]
                for day in (*range(1, 36), None)
            ]

    fast = tilings()
    real = Store.digest_state

    def per_level(self, *args, **kwargs):  # report nothing uncovered: the slow path runs
        return DigestState(real(self, *args, **kwargs).covered, {}, False)

    monkeypatch.setattr(Store, "digest_state", per_level)
    assert fast == tilings()
    assert fast[-1]
    assert fast[3] != fast[-1]
