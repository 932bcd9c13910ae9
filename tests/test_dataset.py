"""The distillation dataset: exactly the approved, non-reverted days, each call a valid
chat record, on real SQLite and PostgreSQL, driven through the real loop and check-ins."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from sqlalchemy import select

from loopsim.checkin.decision import decide
from loopsim.config import Settings
from loopsim.exports.dataset import SCHEMA, DatasetFilter, Tally, to_dataset
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord, Day
from loopsim.schemas import CallRole, DayStatus, Decision, RunStatus, parse_spec
from loopsim.testing import amplified_reply, scripted_factory
from loopsim.text import plural
from tests.conftest import SPEC, make_run

ANSWER = "Colonies weigh dance length against distance."


@pytest.fixture
def database(any_db: Database) -> Database:
    return any_db


def reply(messages: list[BaseMessage]) -> str:
    if "Question:" in messages[-1].text and "hands you the question" not in messages[0].text:
        return ANSWER  # a probe prediction at a check-in
    return amplified_reply(messages)


def spec() -> Any:
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {
        "every_days": 3,
        "spot_check_probability": 0.0,
        "probes_per_checkin": 1,
        "adaptive": False,
    }
    data["probes"] = ["What decides where a colony forages?"]
    data["subquestions"] = {"depth": 1, "breadth": 1}
    data["babble"] = {"ideas": 1}
    return parse_spec(data)


def run_through_checkins(database: Database, decisions: list[Decision], tail_days: int) -> str:
    """Three days, then a check-in decided as given, for each decision; then more days
    that no check-in has covered yet. The very first reply is invalid, so day 1 retries."""
    run_id = make_run(database, spec())
    factory, _ = scripted_factory(["this is not json", reply])
    loop = Loop(database, Settings(), factory)
    for decision in decisions:
        loop.run_days(run_id, 3)
        assert loop.opened_checkin is not None
        note = "Count marked foragers only." if decision == Decision.AMEND else None
        with database.read() as session:
            pairs = Store(session).pairs(loop.opened_checkin)
        answers = {probe.id: {"answer": ANSWER, "rating": 4} for _, probe in pairs}
        decide(database, loop.opened_checkin, decision, note=note, answers=answers)
    results = loop.run_days(run_id, tail_days)
    assert len(results) == tail_days
    return run_id


def dataset(database: Database, run_id: str, **options: Any) -> list[dict[str, Any]]:
    with database.read() as session:
        store = Store(session)
        lines = list(to_dataset(store, store.get_run(run_id), DatasetFilter(**options)))
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


def accepted_calls(
    database: Database, run_id: str, probes: bool = False
) -> dict[int, list[CallRecord]]:
    """The accepted calls by day: the days' own, or (``probes``) the check-ins' probe
    predictions attached to the last day each covers."""
    role = CallRecord.role == "probe" if probes else CallRecord.role != "probe"
    with database.read() as session:
        rows = session.execute(
            select(Day.index, CallRecord)
            .join(Day, CallRecord.day_id == Day.id)
            .where(CallRecord.run_id == run_id, CallRecord.accepted, role)
            .order_by(CallRecord.id)
        ).all()
    out: dict[int, list[CallRecord]] = {}
    for index, call in rows:
        out.setdefault(index, []).append(call)
    return out


def test_dataset_holds_exactly_the_approved_days_that_were_not_reverted(database):
    # approve 1-3, reject 4-6 (reverted), amend 7-9 (approved), then 10-11 unreviewed.
    run_id = run_through_checkins(
        database, [Decision.APPROVE, Decision.REJECT, Decision.AMEND], tail_days=2
    )
    with database.read() as session:
        statuses = {d.index: d.status for d in Store(session).list_days(run_id)}
    assert [i for i, s in statuses.items() if s == DayStatus.REVERTED] == [4, 5, 6]
    assert sorted(statuses) == list(range(1, 12))

    records = dataset(database, run_id)
    days = [r["metadata"]["day_index"] for r in records]
    assert sorted(set(days)) == [1, 2, 3, 7, 8, 9]
    assert days == sorted(days)
    # One record per accepted call of those days, and nothing else.
    calls = accepted_calls(database, run_id)
    assert len(records) == sum(len(calls[d]) for d in (1, 2, 3, 7, 8, 9))
    kinds = {r["metadata"]["kind"] for r in records}
    assert kinds == {"day", "subquestion", "critic"}


def test_each_record_is_a_chat_whose_reply_is_what_was_accepted(database):
    run_id = run_through_checkins(database, [Decision.APPROVE], tail_days=0)
    records = dataset(database, run_id)
    calls = accepted_calls(database, run_id)
    flat = [c for d in sorted(calls) for c in calls[d]]
    assert len(records) == len(flat) > 3
    for record, call in zip(records, flat, strict=True):
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        assert all(set(m) == {"role", "content"} and m["content"] for m in messages)
        assert messages[-1]["content"] == call.reply
        assert record["metadata"]["schema"] == SCHEMA
        assert record["metadata"]["kind"] == call.role
    # Day 1's first reply was invalid; the record keeps the clean prompt, not the repair.
    day1 = [r for r in records if r["metadata"]["day_index"] == 1]
    first = next(r for r in day1 if r["metadata"]["kind"] == "day")
    assert "not json" not in json.dumps(first["messages"])
    with database.read() as session:
        retried = session.scalars(
            select(CallRecord).where(CallRecord.run_id == run_id, CallRecord.attempt == 2)
        ).all()
        first_attempt = session.scalars(
            select(CallRecord).where(
                CallRecord.run_id == run_id,
                CallRecord.task == retried[0].task,
                CallRecord.day_id == retried[0].day_id,
                CallRecord.attempt == 1,
            )
        ).one()
    assert len(retried) == 1
    assert len(retried[0].messages) == 4
    assert first["messages"][:-1] == first_attempt.messages


def test_no_approval_yet_means_an_empty_dataset(database):
    run_id = run_through_checkins(database, [], tail_days=2)
    assert dataset(database, run_id) == []


def test_filters_by_day_kind_and_reverted(database):
    run_id = run_through_checkins(database, [Decision.APPROVE, Decision.REJECT], tail_days=0)
    window = dataset(database, run_id, since_day=2, until_day=2)
    assert {r["metadata"]["day_index"] for r in window} == {2}
    only = dataset(database, run_id, kinds=frozenset({CallRole.CRITIC}))
    assert only
    assert {r["metadata"]["kind"] for r in only} == {"critic"}
    assert {r["metadata"]["day_index"] for r in only} == {1, 2, 3}
    everything = dataset(database, run_id, include_reverted=True)
    assert {r["metadata"]["day_index"] for r in everything} == {1, 2, 3, 4, 5, 6}
    # Probe predictions are the check-ins', not the days' researchers': only by name.
    assert "probe" not in {r["metadata"]["kind"] for r in everything}
    probes = dataset(database, run_id, kinds=frozenset({CallRole.PROBE}))
    assert len(probes) == len(accepted_calls(database, run_id, probes=True)[3]) > 0
    assert {r["metadata"]["day_index"] for r in probes} == {3}
    reverted = {r["metadata"]["day_status"] for r in everything if r["metadata"]["day_index"] > 3}
    assert reverted == {"reverted"}


def test_predictions_of_a_checkin_approved_without_answers_stay_withheld(database):
    """An approval without the blind answers leaves its predictions hidden in the review
    and the JSONL export; the probe dataset gave them away. A later check-in may ask the
    same probes again, so they stay hidden here too, and the count says why."""
    run_id = make_run(database, spec())
    loop = Loop(database, Settings(), scripted_factory([reply])[0])
    loop.run_days(run_id, 3)
    assert loop.opened_checkin is not None
    decide(database, loop.opened_checkin, Decision.APPROVE)  # --skip-probes: no answers
    made = len(accepted_calls(database, run_id, probes=True)[3])
    assert made > 0
    tally = Tally()
    with database.read() as session:
        store = Store(session)
        filt = DatasetFilter(kinds=frozenset({CallRole.PROBE}))
        assert list(to_dataset(store, store.get_run(run_id), filt, tally)) == []
    assert tally.withheld == made
    assert tally.describe() == (
        f"0 examples from 0 days; {plural(made, 'probe prediction')} withheld, from "
        "check-ins with probes the human has not answered"
    )
    # The days' own work is approved all the same.
    assert {r["metadata"]["day_index"] for r in dataset(database, run_id)} == {1, 2, 3}


def test_cli_writes_the_dataset_and_refuses_filters_elsewhere(database, cli_factory, tmp_path):
    run_id = run_through_checkins(database, [Decision.APPROVE], tail_days=1)
    cli = cli_factory(database.url.render_as_string(hide_password=False))
    out = tmp_path / "train.jsonl"
    result = cli("export", run_id, "--format", "dataset", "--kind", "day", "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["metadata"]["day_index"] for x in lines] == [1, 2, 3]
    # The count goes to stderr, with the committed day 4 that no check-in approved yet.
    assert "3 examples from 3 days; 1 committed day awaits an approving check-in" in (result.stderr)
    # A run completed without a last check-in: those days will never be approved.
    with database.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.COMPLETED, "day budget spent")
    ended = cli("export", run_id, "--format", "dataset", "--kind", "day", "-o", str(out))
    assert ended.exit_code == 0, ended.output
    assert ended.stderr.strip().endswith(
        "3 examples from 3 days; 1 committed day was never approved (the run is completed: "
        "no check-in will come)"
    )
    piped = cli("export", run_id, "--format", "dataset", "--until-day", "2")
    assert piped.exit_code == 0
    assert len(piped.stdout.splitlines()) > 2
    assert "from 2 days" in piped.stderr
    assert "await" not in piped.stderr
    bad = cli("export", run_id, "--format", "jsonl", "--since-day", "2")
    assert bad.exit_code == 2
    assert "--since-day: only for --format dataset" in bad.output
    backwards = cli("export", run_id, "--format", "dataset", "--since-day", "3", "--until-day", "2")
    assert backwards.exit_code == 2
    assert "after --until-day" in backwards.output
    unknown = cli("export", run_id, "--format", "dataset", "--kind", "dream")
    assert unknown.exit_code == 2
