"""Scoring a check-in: raw similarity, calibrated agreement and drift, in one place.

The review screen (before the decision) and :func:`decide` (which stores the figures) both
score through :func:`score_checkin`, so what the human sees is what is recorded. Scoring
only reads: it is run outside any write transaction, because a similarity may be a
sentence embedder and a judge is a model call, and neither may hold the database's write
lock (see docs/drift.md).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loopsim.checkin import calibration, drift
from loopsim.checkin.opening import usable
from loopsim.record.store import Store
from loopsim.record.tables import Probe, ProbePair

if TYPE_CHECKING:
    from loopsim.checkin.judge import Judged

# The human answers to other probes a prediction is compared with, for the chance level:
# the most recent ones, so the cost per check-in stays bounded as a run grows.
NULL_ANSWERS = 12


def kind_of(similarity: drift.Similarity) -> str:
    """Which priors a similarity's scores are read against (see calibration.PRIORS)."""
    if similarity is drift.lexical_similarity:
        return "lexical"
    return str(getattr(similarity, "kind", "generic"))


@dataclass(frozen=True)
class PairScore:
    pair_id: int
    probe_id: int
    similarity: float | None  # raw, prediction against the human's answer
    calibrated: float | None  # the similarity between chance and ceiling, in [0, 1]
    rating: int | None  # the human's
    judge: int | None  # the judge's, when one was asked and no human rating was given
    agreement: float | None  # what counts: rating, else judge, else calibrated
    judged: Judged | None = None  # the judge's verdict and calls, when asked now
    predicted: bool = True  # False: the model gave no valid prediction to compare


@dataclass(frozen=True)
class CheckinScore:
    pairs: list[PairScore]
    levels: calibration.Levels
    kind: str
    ceiling_measured: float | None  # the human's mean retest similarity, if measured

    @property
    def agreement(self) -> float | None:
        values = [p.agreement for p in self.pairs if p.agreement is not None]
        return statistics.fmean(values) if values else None

    @property
    def drift(self) -> float | None:
        values = [p.agreement for p in self.pairs if p.agreement is not None]
        return drift.drift_score(values)


def answered(
    store: Store, run_id: str, given: Mapping[int, str] | None = None
) -> list[tuple[ProbePair, Probe, str]]:
    """Every answered pair of the run, oldest first, with ``given`` (answers by pair id,
    not stored yet) standing in where a pair has none stored."""
    given = given or {}
    found: list[tuple[ProbePair, Probe, str]] = []
    for c in store.list_checkins(run_id):
        for pair, probe in store.pairs(c.id):
            answer = pair.human_answer or given.get(pair.id)
            if answer:
                found.append((pair, probe, answer))
    return found


def retest_similarities(
    answered_pairs: Sequence[tuple[ProbePair, Probe, str]], similarity: drift.Similarity
) -> list[float]:
    """How similar each retest answer of the human is to their first answer, from the
    run's answered pairs (:func:`answered`), oldest first."""
    first: dict[int, str] = {}
    scores: list[float] = []
    for pair, probe, answer in answered_pairs:
        if pair.is_retest and probe.id in first:
            scores.append(similarity(first[probe.id], answer))
        first.setdefault(probe.id, answer)
    return scores


def score_checkin(
    store: Store,
    checkin_id: int,
    similarity: drift.Similarity,
    *,
    answers: Mapping[int, str] | None = None,
    ratings: Mapping[int, int | None] | None = None,
    judge: Callable[[Probe, str, str], Judged] | None = None,
) -> CheckinScore:
    """Score one check-in. ``answers`` and ``ratings`` (by pair id) stand in for what is
    not stored yet (an answers file about to be stored with the decision); ``judge``
    rates a prediction against an answer where the human gave no rating."""
    checkin = store.get_checkin(checkin_id)
    pairs: Sequence[tuple[ProbePair, Probe]] = store.pairs(checkin_id)
    answers = answers or {}
    ratings = ratings or {}
    given = {p.id: answers.get(p.id, p.human_answer) for p, _ in pairs}
    # One read of every answered pair of the run serves both chance and the ceiling.
    run_answers = answered(store, checkin.run_id, answers)
    history = [(probe.id, a) for _p, probe, a in run_answers]
    kind = kind_of(similarity)

    # Chance, from the human's own answers: each answer of this check-in against the
    # human's answers to other probes. Not from the predictions: a simulation that has
    # wandered off sits far from every answer, which would lower its own chance level
    # and hide the drift (benchmarks/README.md, "Calibrated agreement").
    nulls: list[float] = []
    for pair, probe in pairs:
        mine = given[pair.id]
        if not mine:
            continue
        others = [a for pid, a in history if pid != probe.id][-NULL_ANSWERS:]
        nulls += [similarity(mine, a) for a in others]
    retests = retest_similarities(run_answers, similarity)
    levels = calibration.levels(kind, nulls, retests)

    scored: list[PairScore] = []
    for pair, probe in pairs:
        answer = given[pair.id]
        rating = ratings.get(pair.id, pair.rating)
        if answer is None:
            scored.append(PairScore(pair.id, probe.id, None, None, rating, None, None))
            continue
        if not usable(pair.prediction):
            # Nothing to compare: the model gave no valid prediction. That is a failed
            # call, not evidence of drift; only a rating the human gave anyway counts.
            agreement = calibration.pair_agreement(None, rating, None)
            scored.append(
                PairScore(pair.id, probe.id, None, None, rating, None, agreement, predicted=False)
            )
            continue
        prediction = pair.prediction or ""
        raw = similarity(prediction, answer)
        calibrated = levels.calibrate(raw)
        verdict, judged = pair.judge_rating, None
        if rating is None and verdict is None and judge is not None and prediction:
            judged = judge(probe, answer, prediction)
            verdict = judged.rating
        agreement = calibration.pair_agreement(calibrated, rating, verdict)
        scored.append(
            PairScore(pair.id, probe.id, raw, calibrated, rating, verdict, agreement, judged)
        )
    ceiling = statistics.fmean(retests) if retests else None
    return CheckinScore(scored, levels, kind, ceiling)
