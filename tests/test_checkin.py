"""Check-ins with a scripted researcher and a scripted human, on real SQLite."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from loopsim.checkin.answers import rate, record_answer, reveal
from loopsim.checkin.decision import decide
from loopsim.checkin.schedule import adaptive_interval, due, schedule_change
from loopsim.config import Settings
from loopsim.errors import InvalidState, SpecError
from loopsim.exports.markdown import to_markdown
from loopsim.loop import Loop, Turn
from loopsim.record.db import Database
from loopsim.record.store import EntryInput, Store
from loopsim.schemas import DayStatus, Decision, ModelSpec, RunSpec, RunStatus
from loopsim.testing import add_day, default_reply, scripted_factory
from tests.conftest import SPEC, make_run, parse_spec

BEES = "Colonies follow the longest dances, so distance and nectar quality trade off there."
ROCKETS = "Rocket engines and orbital mechanics are what matter most; bees are irrelevant."


@pytest.fixture
def database(any_db):
    """Every check-in test here runs on SQLite and on PostgreSQL."""
    return any_db


def spec_with(**checkins: Any) -> RunSpec:
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {
        "every_days": 3,
        "spot_check_probability": 0.0,
        "probes_per_checkin": 2,
        **checkins,
    }
    data["probes"] = ["What decides where a colony forages?", "What would you measure first?"]
    data["budget"]["days"] = 1000
    return parse_spec(data)


def persona_switching_model(switch_after_entries: int):
    """Answers probes like persona A until the record holds enough entries, then like B."""

    def reply(messages: list[BaseMessage]) -> str:
        text = messages[-1].text
        if "Question:" in text:
            return ROCKETS if text.count("[#") >= switch_after_entries else BEES
        return default_reply(messages)

    return reply


def loop_with(database: Database, script: Any = (default_reply,)):
    factory, model = scripted_factory(list(script))
    return Loop(database, Settings(), factory), model


def test_a_scheduled_checkin_stops_the_loop_with_predictions(database):
    run_id = make_run(database, spec_with())
    loop, _model = loop_with(database, [persona_switching_model(1000)])
    results = loop.run_days(run_id, 10)
    assert [r.index for r in results] == [1, 2, 3]
    assert loop.opened_checkin is not None
    with database.read() as session:
        store = Store(session)
        (c,) = store.list_checkins(run_id)
        pairs = store.pairs(c.id)
        run = store.get_run(run_id)
    assert (c.reason, c.first_day_index, c.last_day_index) == ("scheduled", 1, 3)
    assert [p.prediction for p, _ in pairs] == [BEES, BEES]
    assert run.status == RunStatus.AWAITING_CHECKIN
    with pytest.raises(InvalidState, match="checkin list --pending"):
        loop.run_days(run_id, 1)


def test_spot_checks_fire_off_schedule_and_day_prompts_never_show_them(database):
    spec = spec_with(every_days=1000, spot_check_probability=0.3)
    runs = [make_run(database, spec) for _ in range(6)]
    with database.write() as session:  # fixed secrets, so the test is deterministic
        for number, run_id in enumerate(runs):
            Store(session).get_run(run_id).secret_seed = f"secret-{number}"
    stopped_at = {}
    for run_id in runs:
        loop, _ = loop_with(database)
        loop.run_days(run_id, 12)
        with database.read() as session:
            store = Store(session)
            checkins = store.list_checkins(run_id)
            stopped_at[run_id] = checkins[0].last_day_index if checkins else None
            assert all(c.reason == "spot_check" for c in checkins)
    fired = [d for d in stopped_at.values() if d is not None]
    assert fired
    assert len(set(fired)) > 1
    # Day k's prompt is the same whether or not a check-in came right after day k.
    with database.read() as session:
        store = Store(session)
        prompts = {r: [d.prompt for d in store.list_days(r)] for r in runs}
    shortest = min(len(p) for p in prompts.values())
    for day in range(shortest):
        assert len({json.dumps(p[day]) for p in prompts.values()}) == 1


def test_a_second_decision_is_refused_and_changes_nothing(database):
    run_id = make_run(database, spec_with())
    loop, _ = loop_with(database)
    loop.run_days(run_id, 5)
    first = decide(database, loop.opened_checkin, Decision.APPROVE)
    with database.read() as session:
        before = Store(session).get_checkin(first.checkin_id).decided_at
    with pytest.raises(InvalidState, match="already decided"):
        decide(database, first.checkin_id, Decision.HALT)
    with database.read() as session:
        store = Store(session)
        assert store.get_checkin(first.checkin_id).decided_at == before
        assert store.get_run(run_id).status == RunStatus.RUNNING


def test_reject_reverts_the_days_keeps_them_and_hides_them(database):
    run_id = make_run(database, spec_with())
    loop, model = loop_with(database)
    loop.run_days(run_id, 5)
    outcome = decide(database, loop.opened_checkin, Decision.REJECT)
    assert outcome.reverted_days == 3
    loop.run_days(run_id, 1)
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        assert [d.status for d in days] == [DayStatus.REVERTED] * 3 + [DayStatus.COMMITTED]
        assert store.verify_chain(run_id).checked == 8
        md = to_markdown(store, store.get_run(run_id))
        md_all = to_markdown(store, store.get_run(run_id), include_reverted=True)
    assert "first day" in model.calls[-1][-1].text  # the reverted days are out of the view
    assert "## Day 1" not in md
    assert "## Day 4" in md
    assert "## Day 1: 2025-06-02 (reverted)" in md_all


def test_an_amend_note_appears_in_every_later_prompt(database):
    run_id = make_run(database, spec_with())
    loop, model = loop_with(database)
    loop.run_days(run_id, 5)
    decide(database, loop.opened_checkin, Decision.AMEND, note="Use marked foragers only.")
    calls_before = len(model.calls)
    loop.run_days(run_id, 3)
    later = [
        call[-1].text for call in model.calls[calls_before:] if "Question:" not in call[-1].text
    ]
    assert len(later) == 3
    assert all("Use marked foragers only." in text for text in later)
    with pytest.raises(SpecError, match="--note"):
        decide(database, loop.opened_checkin, Decision.AMEND)


def test_answers_are_blind(database):
    run_id = make_run(database, spec_with())
    loop, _ = loop_with(database, [persona_switching_model(1000)])
    loop.run_days(run_id, 3)
    with database.read() as session:
        pair_id = Store(session).pairs(loop.opened_checkin)[0][0].id
    with pytest.raises(InvalidState, match="answer the probe before"):
        reveal(database, pair_id)
    record_answer(database, pair_id, BEES)
    assert reveal(database, pair_id) == BEES
    with pytest.raises(InvalidState, match="already shown"):
        record_answer(database, pair_id, "a changed answer")
    with database.read() as session:
        pair = Store(session).pairs(loop.opened_checkin)[0][0]
    assert pair.answered_at <= pair.revealed_at
    assert pair.similarity == pytest.approx(1.0)


def human_answers_as_bees(database: Database, checkin_id: int) -> dict[int, dict[str, Any]]:
    with database.read() as session:
        pairs = Store(session).pairs(checkin_id)
    return {
        probe.id: {"answer": BEES, "rating": 5 if pair.prediction == BEES else 1}
        for pair, probe in pairs
    }


def drift_levels(database: Database, run_id: str, switch_after: int, checkins: int) -> list:
    loop, _ = loop_with(database, [persona_switching_model(switch_after)])
    levels = []
    for _ in range(checkins):
        loop.run_days(run_id, 10)
        answers = human_answers_as_bees(database, loop.opened_checkin)
        levels.append(
            decide(database, loop.opened_checkin, Decision.APPROVE, answers=answers).drift
        )
    return levels


def test_drift_rises_past_the_alarm_when_the_persona_changes(database):
    run_id = make_run(database, spec_with())
    levels = drift_levels(database, run_id, switch_after=8, checkins=3)
    assert next(lv.level for lv in levels) == "ok"
    assert levels[-1].score >= 0.7
    assert levels[-1].level == "alarm"


def test_a_stable_run_raises_no_alarm(database):
    run_id = make_run(database, spec_with())
    levels = drift_levels(database, run_id, switch_after=10**6, checkins=3)
    assert all(lv.level == "ok" and lv.score < 0.1 for lv in levels)


def test_exports_show_checkins_and_never_a_prediction_before_the_answer(database):
    from loopsim.exports.markdown import to_jsonl

    run_id = make_run(database, spec_with(probes_per_checkin=1))
    loop, _ = loop_with(database, [persona_switching_model(10**6)])
    loop.run_days(run_id, 3)
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        pending_md = to_markdown(store, run)
        pending_json = [json.loads(x) for x in to_jsonl(store, run)]
    assert BEES not in pending_md
    assert "hidden until" in pending_md
    (record,) = [r for r in pending_json if r["type"] == "checkin"]
    assert record["decision"] is None
    assert record["pairs"][0]["prediction"] is None
    decide(
        database,
        loop.opened_checkin,
        Decision.APPROVE,
        answers=human_answers_as_bees(database, loop.opened_checkin),
    )
    with database.read() as session:
        store = Store(session)
        md = to_markdown(store, store.get_run(run_id))
        records = [json.loads(x) for x in to_jsonl(store, store.get_run(run_id))]
    assert "### Check-in 1: scheduled, days 1 to 3: approve; drift 0.00" in md
    (record,) = [r for r in records if r["type"] == "checkin"]
    assert record["pairs"][0] | {"probe_id": 0} == {
        "probe_id": 0,
        "question": record["pairs"][0]["question"],
        "human_answer": BEES,
        "prediction": BEES,
        "rating": 5,
        "similarity": 1.0,
        "agreement": 1.0,
        "null_level": record["pairs"][0]["null_level"],
        "ceiling": record["pairs"][0]["ceiling"],
        "judge_rating": None,
        "judge_reason": None,
        "is_retest": False,
    }
    assert record["drift_score"] == 0.0
    assert record["agreement"] == 1.0
    assert record["similarity_kind"] == "lexical"
    assert record["drift_trend"] == 0.0


def test_a_day_that_mentions_a_later_date_opens_a_future_leak_checkin(database):
    from loopsim.testing import report_json

    run_id = make_run(database, spec_with(every_days=1000))
    leak = report_json(("note", "Looking back", "By 2031 the field had settled this question."))
    loop, _ = loop_with(database, [default_reply, leak])
    results = loop.run_days(run_id, 5)
    assert [r.index for r in results] == [1, 2]
    with database.read() as session:
        (c,) = Store(session).list_checkins(run_id)
    assert c.reason == "future_leak"
    assert c.last_day_index == 2
    # The check-in keeps the phrase that leaked, for the human to read.
    assert c.detail == "entry #3 mentions 2031, after 2025-06-02"


def test_a_leak_is_judged_on_the_last_day_while_charter_drift_reads_its_window(database):
    """The check-in test reads the last few days once, for both alarms: a later date on
    an earlier day of the window (already judged on its own day) raises nothing, the
    same date on the last day does."""
    from loopsim.checkin.drift import lexical_similarity

    spec = spec_with(every_days=1000, charter_drift_window=3, charter_drift_drop=0.9)
    run_id = make_run(database, spec)
    leak = EntryInput("note", "Looking back", "By 2031 the field had settled this question.")
    plain = EntryInput("note", "Foraging", "Colonies weigh distance against nectar quality.")
    with database.write() as session:
        store = Store(session)
        for index, entries in enumerate([[plain], [leak], [plain], [plain]], 1):
            add_day(store, run_id, index, entries)

    def reason() -> str | None:
        with database.read() as session:
            store = Store(session)
            run = store.get_run(run_id)
            return due(store, run, spec, similarity=lexical_similarity)

    assert reason() is None  # day 2 leaked, but day 4 is the last: judged on day 2
    with database.write() as session:
        add_day(Store(session), run_id, 5, [leak])
    assert reason() == "future_leak"


def test_numbers_that_look_like_years_are_no_future_leak(database):
    """A research log is full of 4-digit numbers; only dates may raise a leak."""
    from loopsim.testing import report_json

    run_id = make_run(database, spec_with(every_days=1000))
    numbers = report_json(
        (
            "note",
            "Sparse autoencoder sweep",
            "Trained 2048 latents on a 2304-dim residual stream for 2500 steps; "
            "the 4096-wide dictionary needed 3000 more.",
        )
    )
    loop, _ = loop_with(database, [numbers])
    assert len(loop.run_days(run_id, 3)) == 3
    with database.read() as session:
        assert Store(session).list_checkins(run_id) == []


def test_charter_drift_uses_the_configured_similarity(database):
    """The similarity given to the loop, not the word-count cosine, measures the charter.
    Every day's words are nearly the same (the word-count cosine sees no drift), but the
    configured similarity reads the marked days as off-charter and raises the alarm."""
    from loopsim.testing import report_json

    body = "How honeybee colonies choose where to forage: distance against nectar quality."
    on = report_json(("note", "Foraging", body))
    off = report_json(("note", "Foraging", body + " Marked."))
    compared: list[str] = []

    def similarity(charter: str, days: str) -> float:
        compared.append(charter)
        return 0.1 if "Marked." in days else 0.9

    run_id = make_run(database, spec_with(every_days=1000, charter_drift_window=2))
    factory, _ = scripted_factory([on, on, off, off, off])
    loop = Loop(database, Settings(), factory, similarity)
    loop.run_days(run_id, 6)
    with database.read() as session:
        (c,) = Store(session).list_checkins(run_id)
    assert c.reason == "charter_drift"
    assert c.last_day_index == 4
    assert c.detail == "charter similarity fell from 0.90 to 0.10"
    assert compared
    assert "forage" in compared[0]


def test_unsupervised_day_budget_opens_a_budget_checkin(database):
    run_id = make_run(database, spec_with(every_days=1000, max_unsupervised_days=2))
    loop, _ = loop_with(database)
    assert len(loop.run_days(run_id, 5)) == 2
    with database.read() as session:
        assert Store(session).list_checkins(run_id)[0].reason == "budget"


def test_external_drift_budget_counts_from_the_last_approval(database):
    import datetime as dt

    data = json.loads(json.dumps(SPEC))
    data["time"] = {"policy": "wall_clock", "anchor": "2025-06-02", "rate": 1.0}
    data["checkins"] = {
        "every_days": 1000,
        "spot_check_probability": 0.0,
        "max_external_drift_days": 10,
    }
    run_id = make_run(database, parse_spec(data))
    loop, _ = loop_with(database)
    loop.run_days(run_id, 1)
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        spec = RunSpec.model_validate(run.spec)
        soon = run.created_at + dt.timedelta(days=5)
        later = run.created_at + dt.timedelta(days=12)
        assert due(store, run, spec, now=soon) is None
        assert due(store, run, spec, now=later) == "budget"


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([], 4),
        ([0.9], 2),
        ([0.9, 0.9, 0.9], 1),
        ([0.1, 0.1], 6),
        ([0.1, 0.1, 0.1, 0.1, 0.1, 0.1], 9),
        ([0.1, 0.6, 0.1], 4),
    ],
)
def test_adaptive_interval(scores, expected):
    from loopsim.schemas import CheckinPolicy

    policy = CheckinPolicy(every_days=4, max_interval_days=9)
    assert adaptive_interval(scores, policy) == expected


def test_low_drift_never_brings_check_ins_closer_than_every_days():
    """every_days above max_interval_days: low scores lengthen no further, and the cap is
    not a reason to ask the human more often than they chose; an alarm still halves."""
    from loopsim.schemas import CheckinPolicy

    policy = CheckinPolicy(every_days=30, max_interval_days=20)
    assert adaptive_interval([0.1, 0.1], policy) == 30
    assert adaptive_interval([0.1, 0.1, 0.1, 0.1], policy) == 30
    assert adaptive_interval([0.9], policy) == 15
    assert adaptive_interval([0.9, 0.1, 0.1], policy) == 20


@pytest.mark.parametrize(
    ("before", "after", "says"),
    [
        ([], [0.9], "after 2 more days, shorter than 4: drift 0.90 reached the alarm 0.70"),
        ([0.1], [0.1, 0.1], "after 6 more days, longer than 4: two drift scores in a row below"),
        ([0.9], [0.9, 0.9], "after 1 more day, shorter than 2"),
        ([0.1], [0.1, 0.5], None),
        ([], [None], None),
    ],
)
def test_schedule_change_says_when_and_why(before, after, says):
    from loopsim.schemas import CheckinPolicy

    policy = CheckinPolicy(every_days=4, max_interval_days=9)
    line = schedule_change(before, after, policy)
    if says is None:
        assert line is None
    else:
        assert line is not None, line
        assert says in line, line


def test_no_schedule_change_when_adaptive_is_off():
    from loopsim.schemas import CheckinPolicy

    policy = CheckinPolicy(every_days=4, adaptive=False)
    assert schedule_change([], [0.95], policy) is None


def _prediction_drift_run(database: Database) -> str:
    """A run checked in after 2 unsupervised days, whose approved predictions are asked
    again every 3 days."""
    policy = {"every_days": 1000, "spot_check_probability": 0.0, "max_unsupervised_days": 2}
    return make_run(database, spec_with(**policy, prediction_drift_every=3))


def test_prediction_drift_alarm_reasks_the_approved_probes(database):
    run_id = _prediction_drift_run(database)
    # Answers as A while the view holds 4 entries or fewer (days 1-2), then as B.
    loop, _ = loop_with(database, [persona_switching_model(5)])
    loop.run_days(run_id, 10)
    first = loop.opened_checkin
    decide(database, first, Decision.APPROVE)  # approves predictions made as A
    loop.run_days(run_id, 10)
    with database.read() as session:
        store = Store(session)
        second = store.get_checkin(loop.opened_checkin)
        pairs = store.pairs(second.id)
    assert (second.reason, second.last_day_index) == ("prediction_drift", 3)
    assert "moved" in second.detail
    assert [p.prediction for p, _ in pairs] == [ROCKETS, ROCKETS]


def _due_then_opened(loop: Loop, run_id: str, days: int) -> list[tuple[bool, int | None]]:
    """Each day: what ``checkin_due`` said after it, and what ``open_due_checkin`` did."""
    seen = []
    for _ in range(days):
        if loop.step(run_id) is None:
            break
        said = loop.checkin_due(run_id)
        seen.append((said, loop.open_due_checkin(run_id)))
        if seen[-1][1] is not None:
            break
    return seen


def test_checkin_due_says_yes_whenever_a_check_in_then_opens(database):
    """The worker asks ``checkin_due`` first and calls ``open_due_checkin`` only on a
    yes: a no on a day that would have opened one would skip a check-in."""
    run_id = _prediction_drift_run(database)
    loop, _ = loop_with(database, [persona_switching_model(5)])
    loop.start(run_id)
    first = _due_then_opened(loop, run_id, 10)
    assert [said for said, _ in first] == [False, True]  # the budget of 2 unsupervised days
    decide(database, first[-1][1], Decision.APPROVE)
    second = _due_then_opened(loop, run_id, 10)
    # Day 3 re-asks the approved probes (a yes); their answers moved, so it opens.
    assert [said for said, _ in second] == [True]
    with database.read() as session:
        assert Store(session).get_checkin(second[-1][1]).reason == "prediction_drift"
    for said, opened in first + second:
        assert said or opened is None


def test_next_day_is_the_check_in_test_then_the_plan(database):
    """A worker's turn reads both in one session: a check-in due wins over the day,
    otherwise the day planned is the one :meth:`Loop.plan` plans."""
    run_id = _prediction_drift_run(database)
    loop, _ = loop_with(database, [persona_switching_model(5)])
    loop.start(run_id)
    turns = []
    for _ in range(4):
        turn = loop.next_day(run_id)
        turns.append(turn)
        assert (turn is Turn.CHECKIN_DUE) == loop.checkin_due(run_id)
        if turn is Turn.CHECKIN_DUE:
            assert loop.open_due_checkin(run_id) is not None
            break
        planned = loop.plan(run_id)
        assert turn is not None
        assert planned is not None
        assert (turn.index, turn.prompt.hash) == (planned.index, planned.prompt.hash)
        loop.step(run_id)
    assert [getattr(t, "index", t) for t in turns] == [1, 2, Turn.CHECKIN_DUE]
    with pytest.raises(InvalidState, match="awaiting_checkin"):
        loop.next_day(run_id)  # as plan refuses a run that is not steppable


def test_a_worker_turn_dates_the_day_by_the_approved_check_ins_it_read(database):
    """``next_day`` counts approvals from the check-in rows its test read, not with a
    query of its own: a per-check-in clock must still step once per approve or amend,
    never for a reject, and agree with :meth:`Loop.plan`."""
    import datetime as dt

    data = json.loads(json.dumps(spec_with(every_days=1000).model_dump(mode="json")))
    data["time"] = {"policy": "per_checkin", "anchor": "2025-06-02", "step_days": 7}
    run_id = make_run(database, RunSpec.model_validate(data))
    loop, _ = loop_with(database)
    loop.start(run_id)
    for number, decision in enumerate([Decision.APPROVE, Decision.REJECT, Decision.AMEND]):
        with database.write() as session:
            store = Store(session)
            checkin = store.add_checkin(
                run_id, "scheduled", first_day=number, last_day=number, detail=None, predictions=[]
            )
            checkin.decision = decision
    turn = loop.next_day(run_id)
    planned = loop.plan(run_id)
    assert turn is not None
    assert turn is not Turn.CHECKIN_DUE
    assert planned is not None
    assert turn.external_date == dt.date(2025, 6, 16)  # two approvals of 7 days each
    assert planned.external_date == turn.external_date


def test_checkin_due_is_no_for_a_run_that_is_not_running(database):
    run_id = make_run(database, spec_with(every_days=1))
    loop, _ = loop_with(database)
    loop.start(run_id)
    loop.step(run_id)
    assert loop.checkin_due(run_id)
    with database.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.PAUSED)
    assert not loop.checkin_due(run_id)
    assert loop.open_due_checkin(run_id) is None


def test_charter_drift_alarm_when_days_leave_the_charter(database):
    from loopsim.testing import report_json

    on = report_json(
        (
            "note",
            "Foraging",
            "How honeybee colonies choose where to forage: "
            "distance against nectar quality, weighed by dances.",
        )
    )
    off = report_json(
        (
            "note",
            "Rockets",
            "Orbital mechanics and engine thrust tables for launch vehicles, nothing else today.",
        )
    )
    run_id = make_run(database, spec_with(every_days=1000, charter_drift_window=2))
    loop, _ = loop_with(database, [on, on, off, off, off])
    results = loop.run_days(run_id, 10)
    with database.read() as session:
        (c,) = Store(session).list_checkins(run_id)
    assert c.reason == "charter_drift"
    assert len(results) == 4


def test_a_stable_charter_raises_no_charter_alarm(database):
    run_id = make_run(database, spec_with(every_days=1000, charter_drift_window=2))
    loop, _ = loop_with(database)
    assert len(loop.run_days(run_id, 8)) == 8
    assert loop.opened_checkin is None


def test_retests_measure_the_humans_own_consistency(database):
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {
        "every_days": 2,
        "spot_check_probability": 0.0,
        "probes_per_checkin": 1,
        "retest_probability": 1.0,
    }
    data["probes"] = [
        "What decides where a colony forages?",
        "What would you measure first?",
        "Which hive would you start with?",
    ]
    run_id = make_run(database, parse_spec(data))
    with database.write() as session:
        Store(session).get_run(run_id).secret_seed = "fixed-secret"
    loop, _ = loop_with(database, [persona_switching_model(10**6)])
    loop.run_days(run_id, 5)
    first = loop.opened_checkin
    with database.read() as session:
        ((pair, probe),) = Store(session).pairs(first)
    assert not pair.is_retest
    decide(
        database,
        first,
        Decision.APPROVE,
        answers={probe.id: {"answer": "Dance length decides it.", "rating": 3}},
    )
    loop.run_days(run_id, 5)
    with database.read() as session:
        pairs = Store(session).pairs(loop.opened_checkin)
    retests = [(p, pr) for p, pr in pairs if p.is_retest]
    assert [pr.id for _, pr in retests] == [probe.id]  # asked again, chosen or added
    answers = {
        pr.id: {"answer": "Dance length decides it, mostly.", "rating": 3} for _, pr in pairs
    }
    outcome = decide(database, loop.opened_checkin, Decision.APPROVE, answers=answers)
    assert 0.8 < outcome.ceiling < 1.0
    assert outcome.agreement is not None


def test_similarity_is_pluggable_through_langchain_embeddings(database):
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from loopsim.checkin.drift import EmbeddingSimilarity, from_settings, lexical_similarity
    from loopsim.errors import ModelUnavailable

    embedded = EmbeddingSimilarity(DeterministicFakeEmbedding(size=16))
    run_id = make_run(database, spec_with())
    loop, _ = loop_with(database, [persona_switching_model(10**6)])
    loop.run_days(run_id, 5)
    answer = "Only the nectar's sugar content matters to them."
    with database.read() as session:
        pairs = Store(session).pairs(loop.opened_checkin)
    decide(
        database,
        loop.opened_checkin,
        Decision.APPROVE,
        similarity=embedded,
        answers={probe.id: {"answer": answer, "rating": None} for _, probe in pairs},
    )
    with database.read() as session:
        stored = [p.similarity for p, _ in Store(session).pairs(loop.opened_checkin)]
    assert stored == [pytest.approx(embedded(BEES, answer))] * 2
    assert stored[0] != pytest.approx(lexical_similarity(BEES, answer))
    assert from_settings("lexical") is lexical_similarity
    unbuildable = from_settings("nosuchprovider:model")  # built lazily: no error yet
    with pytest.raises(ModelUnavailable, match="cannot build embeddings"):
        unbuildable(BEES, answer)


def test_decisions_while_another_process_steps_see_no_lock_errors(sqlite_url):
    import threading
    import time as clock

    from loopsim.record.db import Database

    stepping_db, deciding_db = Database.open(sqlite_url), Database.open(sqlite_url)
    waiting = make_run(deciding_db, spec_with(every_days=2))
    busy = make_run(stepping_db, spec_with(every_days=10**5, charter_drift_drop=None))
    loop, _ = loop_with(deciding_db, [persona_switching_model(10**6)])
    loop.run_days(waiting, 5)

    def slow(messages):
        clock.sleep(0.01)
        return default_reply(messages)

    errors: list[BaseException] = []

    def step() -> None:
        try:
            factory, _ = scripted_factory([slow])
            Loop(stepping_db, Settings(), factory).run_days(busy, 60)
        except BaseException as exc:  # pragma: no cover - the failure under test
            errors.append(exc)

    worker = threading.Thread(target=step)
    worker.start()
    decided = 0
    while worker.is_alive() or decided == 0:
        with deciding_db.read() as session:
            pending = Store(session).list_checkins(waiting, pending=True)
        if pending:
            decide(deciding_db, pending[0].id, Decision.APPROVE)
            decided += 1
        loop.run_days(waiting, 2)
    worker.join()
    assert errors == []
    assert decided >= 3
    with stepping_db.read() as session:
        assert Store(session).count_days(busy) == 60


def test_a_bank_no_larger_than_a_checkin_is_all_retests_as_documented(database):
    """docs/run-spec.md#retests: every drawn probe answered before is a retest; the
    retest probability only adds one when all drawn probes are new. With 3 probes and 3
    per check-in, check-in 2 re-asks all 3, even at a retest probability of 0."""
    from pathlib import Path

    run_id = make_run(database, spec_with(probes_per_checkin=2, retest_probability=0.0))
    loop, _ = loop_with(database, [persona_switching_model(10**6)])
    loop.run_days(run_id, 5)
    first = loop.opened_checkin
    with database.read() as session:
        pairs = Store(session).pairs(first)
    assert [p.is_retest for p, _ in pairs] == [False, False]
    answers = {probe.id: {"answer": BEES, "rating": 4} for _, probe in pairs}
    decide(database, first, Decision.APPROVE, answers=answers)
    loop.run_days(run_id, 5)
    with database.read() as session:
        pairs = Store(session).pairs(loop.opened_checkin)
    assert [p.is_retest for p, _ in pairs] == [True, True]
    docs = (Path(__file__).parent.parent / "docs" / "run-spec.md").read_text()
    assert "from\nthe second check-in on all of them are retests" in docs


def test_a_stored_answer_or_rating_is_never_overwritten(database):
    run_id = make_run(database, spec_with(probes_per_checkin=1))
    loop, _ = loop_with(database, [persona_switching_model(10**6)])
    loop.run_days(run_id, 5)
    with database.read() as session:
        ((pair, _),) = Store(session).pairs(loop.opened_checkin)
    record_answer(database, pair.id, "Dances decide it.")
    with pytest.raises(InvalidState, match="never overwritten"):
        record_answer(database, pair.id, "Something else.")  # not yet revealed
    reveal(database, pair.id)
    rate(database, pair.id, 4)
    with pytest.raises(InvalidState, match="never overwritten"):
        rate(database, pair.id, 1)
    with database.read() as session:
        ((pair, _),) = Store(session).pairs(loop.opened_checkin)
    assert (pair.human_answer, pair.rating) == ("Dances decide it.", 4)


def test_a_judge_rates_what_the_human_did_not_and_its_verdict_is_kept(database):
    """Answers without ratings: the judge's 1-5 verdict counts for each pair (a contrary
    view is drift even when the words are alike), and its call is stored with the pair.
    A human rating, where given, wins over the judge."""
    from loopsim.checkin.judge import judge

    run_id = make_run(database, spec_with(judge="run"))
    loop, _ = loop_with(database, [persona_switching_model(1000)])
    loop.run_days(run_id, 3)
    checkin_id = loop.opened_checkin
    judge_chat, judge_model = scripted_factory(['{"rating": 1, "reason": "Opposite view."}'])
    handle = judge_chat("scripted:judge", ModelSpec(), 200)
    with database.read() as session:
        pairs = Store(session).pairs(checkin_id)
    first, second = (probe.id for _, probe in pairs)
    outcome = decide(
        database,
        checkin_id,
        Decision.APPROVE,
        answers={first: {"answer": BEES}, second: {"answer": BEES, "rating": 5}},
        judge=lambda probe, answer, prediction: judge(handle, probe.question, answer, prediction),
    )
    assert len(judge_model.calls) == 1  # only the unrated pair was judged
    assert [p.judge for p in outcome.score.pairs] == [1, None]
    assert [p.agreement for p in outcome.score.pairs] == [0.0, 1.0]
    assert outcome.drift.score == 0.5
    with database.read() as session:
        stored = [pair for pair, _ in Store(session).pairs(checkin_id)]
    assert stored[0].judge_rating == 1
    assert stored[0].judge_reason == "Opposite view."
    (call,) = stored[0].judge_calls
    assert call["role"] == "judge"
    assert call["accepted"]
    assert BEES in call["messages"][1]["content"]
    assert stored[1].judge_rating is None
    assert stored[1].judge_calls is None


def test_a_spec_judge_must_name_a_model():
    with pytest.raises(SpecError, match="judge"):
        spec_with(judge="gpt4")


def test_charter_drift_still_fires_when_every_day_is_checked_in(database):
    """Issue 19: with a check-in every day the last approval is always yesterday, which
    left no window to compare, so charter drift could never fire. It now compares against
    the last approval a whole window back."""
    from loopsim.testing import report_json

    body = "How honeybee colonies choose where to forage: distance against nectar quality."
    on = report_json(("note", "Foraging", body))
    off = report_json(("note", "Foraging", body + " Marked."))

    def similarity(charter: str, days: str) -> float:
        return 0.1 if "Marked." in days else 0.9

    spec = spec_with(every_days=1, charter_drift_window=2, probes_per_checkin=0)
    run_id = make_run(database, spec)
    factory, _ = scripted_factory([on, on, on, off, off, off, off])
    loop = Loop(database, Settings(), factory, similarity)
    reasons = []
    for _ in range(6):
        loop.run_days(run_id, 1)
        if loop.opened_checkin is None:
            continue
        with database.read() as session:
            reasons.append(Store(session).get_checkin(loop.opened_checkin).reason)
        decide(database, loop.opened_checkin, Decision.APPROVE)
    assert "charter_drift" in reasons
    assert reasons[:3] == ["scheduled", "scheduled", "scheduled"]


def test_the_daily_check_in_test_reads_a_long_history_as_rows(database):
    """A supervised run's check-ins pile up (one every few days), and the test after each
    day reads all of them for the adaptive interval. It reads them as plain rows, not ORM
    objects, whose loading made it grow with the history; and the answer is still the
    schedule's: 40 calm check-ins have stretched the interval to ``max_interval_days``."""
    from sqlalchemy import event

    from loopsim.record.tables import CheckIn, utcnow

    spec = spec_with(every_days=2, max_interval_days=6, max_external_drift_days=10_000)
    run_id = make_run(database, spec)
    loop, _ = loop_with(database)
    loop.start(run_id)
    with database.write() as session:
        now = utcnow()
        for k in range(40):  # days 1-80, each pair approved with a calm drift score
            first = 2 * k + 1
            add_day(Store(session), run_id, first)
            add_day(Store(session), run_id, first + 1)
            session.add(
                CheckIn(
                    run_id=run_id,
                    reason="scheduled",
                    first_day_index=first,
                    last_day_index=first + 1,
                    decision="approve",
                    drift_score=0.0,
                    opened_at=now,
                    decided_at=now,
                )
            )
    loaded: list[object] = []

    def count(target: object, context: object) -> None:
        loaded.append(target)

    event.listen(CheckIn, "load", count)
    try:
        said = []
        for _ in range(6):
            assert loop.step(run_id).status == DayStatus.COMMITTED
            said.append(loop.checkin_due(run_id))
    finally:
        event.remove(CheckIn, "load", count)
    assert said == [False] * 5 + [True]  # due after 6 days: the stretched interval
    # At most the last approval, once a day, for its decision's date (max_external_drift_
    # days); reading the history as objects loaded all 40 every day.
    assert len(loaded) <= len(said)
    assert loop.open_due_checkin(run_id) is not None
    with database.read() as session:
        last = Store(session).list_checkins(run_id)[-1]
    assert (last.reason, last.first_day_index, last.last_day_index) == ("scheduled", 81, 86)
