"""Calibrated agreement and the judge: the pure parts, and the judge over a chat seam."""

from __future__ import annotations

import json

import pytest

from loopsim.checkin import calibration
from loopsim.checkin.judge import JUDGE_SYSTEM, judge, judge_prompt
from loopsim.errors import ModelUnavailable
from loopsim.schemas import ModelSpec
from loopsim.testing import scripted_factory


def test_calibrate_maps_chance_to_zero_and_the_ceiling_to_one():
    levels = calibration.Levels(null=0.1, ceiling=0.6)
    assert levels.calibrate(0.1) == 0.0
    assert levels.calibrate(0.6) == 1.0
    assert levels.calibrate(0.35) == pytest.approx(0.5)
    # Below chance and above the ceiling are clipped, never negative or over 1.
    assert levels.calibrate(0.0) == 0.0
    assert levels.calibrate(0.95) == 1.0


def test_a_gap_too_small_to_divide_by_is_widened():
    levels = calibration.Levels(null=0.30, ceiling=0.31)
    # Gap 0.01 would turn 0.32 into 2.0 before clipping; MIN_GAP keeps the scale sane.
    assert levels.calibrate(0.30 + calibration.MIN_GAP / 2) == pytest.approx(0.5)


def test_levels_use_the_prior_until_the_run_has_measured_enough():
    prior = calibration.prior("minilm")
    few = calibration.levels("minilm", [0.3, 0.3], [])
    assert (few.null, few.ceiling, few.null_source) == (prior.null, prior.ceiling, "prior")
    many = calibration.levels("minilm", [0.3] * calibration.MIN_NULL_PAIRS, [])
    assert many.null == pytest.approx(0.3)
    assert many.null_source == "run"
    # The prior's gap is kept above the run's own chance level.
    assert many.ceiling == pytest.approx(0.3 + prior.ceiling - prior.null)


def test_a_measured_retest_becomes_the_ceiling_unless_it_sits_at_chance():
    measured = calibration.levels("lexical", [], [0.4, 0.5])
    assert measured.ceiling == pytest.approx(0.45)
    assert measured.ceiling_source == "retest"
    # A human who contradicts themselves (retest at chance) does not invert the scale.
    confused = calibration.levels("lexical", [], [0.0])
    assert confused.ceiling_source == "prior"
    assert confused.ceiling > confused.null


def test_unknown_similarities_get_the_generic_prior():
    assert calibration.prior("openai:text-embedding-3-small") == calibration.GENERIC


@pytest.mark.parametrize(
    ("calibrated", "rating", "judge_rating", "expected"),
    [
        (0.9, None, None, 0.9),
        (0.9, 1, None, 0.0),  # the human's rating wins over the similarity...
        (0.9, 1, 5, 0.0),  # ...and over the judge
        (0.9, None, 1, 0.0),  # the judge wins over the similarity
        (None, None, None, None),
        (0.2, 5, None, 1.0),
    ],
)
def test_pair_agreement_precedence(calibrated, rating, judge_rating, expected):
    assert calibration.pair_agreement(calibrated, rating, judge_rating) == expected


def chat(script):
    factory, model = scripted_factory(script)
    return factory("scripted:judge", ModelSpec(), 200), model


def test_the_judge_rates_and_logs_its_call():
    handle, model = chat([json.dumps({"rating": 4, "reason": "Same claim, other words."})])
    verdict = judge(handle, "Does X work?", "X works well.", "X is effective.")
    assert (verdict.rating, verdict.error) == (4, None)
    assert len(verdict.calls) == 1
    call = verdict.calls[0]
    assert call.role == "judge"
    assert call.accepted
    sent = call.messages
    assert sent[0] == {"role": "system", "content": JUDGE_SYSTEM}
    assert "X works well." in sent[1]["content"]
    assert "X is effective." in sent[1]["content"]
    assert len(model.calls) == 1


def test_an_invalid_verdict_is_retried_with_the_error_fed_back():
    handle, model = chat(
        ["five", json.dumps({"rating": 9, "reason": "x"}), '{"rating": 2, "reason": "No."}']
    )
    verdict = judge(handle, "Q?", "yes", "no")
    assert verdict.rating == 2
    assert [c.accepted for c in verdict.calls] == [False, False, True]
    assert verdict.calls[0].error
    # The second attempt saw the first reply and why it was refused.
    second = model.calls[1]
    assert "not valid" in str(second[-1].content)


def test_a_judge_that_never_answers_validly_gives_no_rating():
    handle, _ = chat(["no idea"])
    verdict = judge(handle, "Q?", "yes", "no", max_retries=1)
    assert verdict.rating is None
    assert verdict.error
    assert len(verdict.calls) == 2


def test_a_dead_judge_gives_no_rating_and_does_not_raise():
    def dead(messages):
        raise ModelUnavailable("endpoint http://127.0.0.1:9/v1 refused the connection")

    handle, _ = chat([dead])
    verdict = judge(handle, "Q?", "yes", "no")
    assert verdict.rating is None
    assert "refused" in (verdict.error or "")


def test_the_judge_prompt_holds_no_schedule_or_record():
    prompt = judge_prompt("What matters?", "Distance.", "Nectar.")
    text = " ".join(content for _, content in prompt.messages).lower()
    for secret in ("check-in", "drift", "seed", "schedule", "log"):
        assert secret not in text
