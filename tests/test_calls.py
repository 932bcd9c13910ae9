"""Every model call is in ``calls``: probe predictions included (issue 19 item 5), with
their tokens and time, and `run show` sums them with the days'."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from loopsim.checkin.decision import decide
from loopsim.config import Settings
from loopsim.errors import ModelUnavailable
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.schemas import Decision, RunStatus, parse_spec
from loopsim.testing import default_reply, scripted_factory
from tests.conftest import SPEC, Cli, make_run

PREDICTION = "Colonies follow the longest dances, so distance and nectar quality trade off."


def spec_with(**checkins: Any) -> Any:
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {
        "every_days": 3,
        "spot_check_probability": 0.0,
        "probes_per_checkin": 2,
        **checkins,
    }
    data["probes"] = ["What decides where a colony forages?", "What would you measure first?"]
    return parse_spec(data)


def predicting(probe_reply: Any = PREDICTION) -> Any:
    """Days as usual; a probe's question gets ``probe_reply`` (text, or a callable)."""

    def reply(messages: list[BaseMessage]) -> str:
        if "Question:" in messages[-1].text:
            return probe_reply(messages) if callable(probe_reply) else str(probe_reply)
        return default_reply(messages)

    return reply


def calls_by_day(database: Database, run_id: str) -> dict[int, list[Any]]:
    with database.read() as session:
        store = Store(session)
        return {
            day.index: [
                (c.ordinal, c.task, c.role, c.attempt, c.accepted, c.tokens_in, c.latency_ms)
                for c in store.day_calls(day.id)
            ]
            for day in store.list_days(run_id)
        }


def test_probe_predictions_are_calls_of_the_last_day_and_count_in_run_show(any_db, any_url):
    run_id = make_run(any_db, spec_with())
    factory, _ = scripted_factory([predicting()], delay=0.02)
    cli = Cli(any_url, factory)
    assert cli("run", "step", run_id, "--days", "5").exit_code == 3  # at the check-in
    calls = calls_by_day(any_db, run_id)
    assert sorted(calls) == [1, 2, 3]
    assert len(calls[1]) == len(calls[2]) == 1
    day, *probes = calls[3]
    assert day[:5] == (1, 0, "day", 1, True)
    # One call a probe, numbered on from the day's own, each a task of its own.
    assert [p[:5] for p in probes] == [(2, 1, "probe", 1, True), (3, 2, "probe", 1, True)]
    assert all(p[5] > 0 and p[6] >= 20 for p in probes)
    with any_db.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        (checkin,) = store.list_checkins(run_id)
        predictions = [pair.prediction for pair, _ in store.pairs(checkin.id)]
    assert predictions == [PREDICTION, PREDICTION]
    info = json.loads(cli("run", "show", run_id, "--json").stdout)
    days_in = sum(d.tokens_in or 0 for d in days)
    assert info["tokens_in"] == days_in + sum(p[5] for p in probes)
    assert info["latency_ms"] == sum(d.latency_ms or 0 for d in days) + sum(p[6] for p in probes)


def test_a_retried_prediction_keeps_every_attempt(any_db):
    run_id = make_run(any_db, spec_with())
    replies = iter(["too short", PREDICTION, PREDICTION])
    factory, _ = scripted_factory([predicting(lambda _: next(replies))])
    Loop(any_db, Settings(), factory).run_days(run_id, 5)
    probes = [c for c in calls_by_day(any_db, run_id)[3] if c[2] == "probe"]
    assert [(p[1], p[3], p[4]) for p in probes] == [(1, 1, False), (1, 2, True), (2, 1, True)]


def test_a_prediction_that_copies_the_persona_is_refused_and_asked_again(any_db):
    """The 270M model behind llama.cpp's server answered probes with its persona ("You
    are Dr. Ada Okafor. A field ecologist ..."), and the check-in scored that copy as the
    simulation's prediction. Days refused such copies; predictions now do too."""
    spec = spec_with()
    run_id = make_run(any_db, spec)
    copied = f"You are {spec.persona.name}. {spec.persona.background} Plain and careful."
    replies = iter([copied, PREDICTION, PREDICTION])

    def reply(messages: list[BaseMessage]) -> str:  # a retry's last turn is the reason
        asked = any("Question:" in m.text for m in messages)
        return next(replies) if asked else default_reply(messages)

    factory, _ = scripted_factory([reply])
    Loop(any_db, Settings(), factory).run_days(run_id, 5)
    probes = [c for c in calls_by_day(any_db, run_id)[3] if c[2] == "probe"]
    assert [(p[1], p[3], p[4]) for p in probes] == [(1, 1, False), (1, 2, True), (2, 1, True)]
    with any_db.read() as session:
        store = Store(session)
        (checkin,) = store.list_checkins(run_id)
        assert [pair.prediction for pair, _ in store.pairs(checkin.id)] == [PREDICTION] * 2
        calls = store.run_calls(run_id, roles=["probe"])
        (refused,) = [c for c, _day in calls if not c.accepted]
    assert refused.error.startswith("the answer copies the instructions word for word")


def test_a_prediction_that_runs_on_past_the_limit_keeps_its_first_sentences(any_db):
    """Asked for two to five sentences with the run's day budget of output tokens, the
    270M model's answers ran to 2,100 to 3,700 characters and every one was refused
    as over 2,000: six calls of a minute each, and no prediction. The sentences within
    the limit are the prediction now; the calls log keeps the whole reply."""
    run_id = make_run(any_db, spec_with())

    def name(n: int) -> str:  # words that differ, or the text reads as degenerate
        return "".join("abcdefghij"[int(d)] for d in str(n)).capitalize()

    long = " ".join(
        f"Scout {name(i)} saw {name(i + 300)} flowers by {name(i + 600)} hives and "
        f"{name(i + 900)} patches, so foragers go."
        for i in range(60)
    )
    assert len(long) > 3000
    factory, _ = scripted_factory([predicting(long)])
    Loop(any_db, Settings(), factory).run_days(run_id, 5)
    probes = [c for c in calls_by_day(any_db, run_id)[3] if c[2] == "probe"]
    assert [(p[1], p[3], p[4]) for p in probes] == [(1, 1, True), (2, 1, True)]
    with any_db.read() as session:
        store = Store(session)
        (checkin,) = store.list_checkins(run_id)
        predictions = [pair.prediction for pair, _ in store.pairs(checkin.id)]
        replies = [c.reply for c, _day in store.run_calls(run_id, roles=["probe"])]
    assert replies == [long, long]
    for prediction in predictions:
        assert 1000 <= len(prediction) <= 2000
        assert long.startswith(prediction)
        assert prediction.endswith("go.")


def test_predictions_made_before_the_endpoint_died_are_kept(any_db):
    """The check-in does not open (it is asked again at the next step), but the calls
    made are recorded, the failed one too."""
    run_id = make_run(any_db, spec_with())
    replies: list[Any] = [PREDICTION]

    def probe(_: Any) -> str:
        if replies:
            return str(replies.pop())
        raise ConnectionError("connection reset by peer")

    factory, _ = scripted_factory([predicting(probe)])
    loop = Loop(any_db, Settings(), factory)
    with pytest.raises(ModelUnavailable, match="connection reset"):
        loop.run_days(run_id, 5)
    probes = [c for c in calls_by_day(any_db, run_id)[3] if c[2] == "probe"]
    assert [(p[1], p[4], p[5]) for p in probes][1] == (2, False, None)
    assert probes[0][1:5] == (1, "probe", 1, True)
    assert probes[0][5] > 0
    with any_db.read() as session:
        store = Store(session)
        assert store.list_checkins(run_id) == []
        assert store.get_run(run_id).status == RunStatus.RUNNING


def test_a_recheck_that_opens_no_checkin_still_keeps_its_calls(any_db):
    run_id = make_run(
        any_db, spec_with(every_days=1000, max_unsupervised_days=2, prediction_drift_every=3)
    )
    factory, _ = scripted_factory([predicting()])  # the same prediction every time: no drift
    loop = Loop(any_db, Settings(), factory)
    loop.run_days(run_id, 10)  # a budget check-in after day 2
    assert loop.opened_checkin is not None
    decide(any_db, loop.opened_checkin, Decision.APPROVE)
    loop.run_days(run_id, 2)  # day 3 re-asks the probes, no drift; day 4 opens one again
    with any_db.read() as session:
        checkins = Store(session).list_checkins(run_id)
    assert [c.last_day_index for c in checkins] == [2, 4]
    calls = calls_by_day(any_db, run_id)
    assert [c[2] for c in calls[3]] == ["day", "probe", "probe"]
    assert [c[2] for c in calls[2]] == [c[2] for c in calls[4]] == ["day", "probe", "probe"]
