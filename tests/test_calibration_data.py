"""Calibrated agreement on the held-out labelled set, with the priors measured on the main
set: faithful paraphrases read well above another persona's answers, and a check-in whose
predictions are all faithful paraphrases does not warn when the human gives no rating.

The held-out set (benchmarks/data/drift_heldout.jsonl) is written in a different style
from the set the priors were measured on, so these are the properties the priors must
carry to text they were not fitted to. Figures: benchmarks/README.md, "Calibrated
agreement on labelled text".
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from loopsim.chat import embeddings
from loopsim.checkin import calibration, drift

HELDOUT = Path(__file__).parent.parent / "benchmarks" / "data" / "drift_heldout.jsonl"
SEPARATION = 0.4  # paraphrase minus off-persona, mean calibrated agreement
WARN = 0.5  # the default drift_warn
PROBES = 3

Row = dict[str, Any]


def rows() -> list[Row]:
    lines = HELDOUT.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def paraphrases(row: Row) -> list[str]:
    return [row["paraphrase"], *row["more_paraphrases"]]


def off_persona(row: Row) -> list[str]:
    return [row["off_persona"], *row["more_off_persona"]]


@functools.cache
def similarity(kind: str) -> Callable[[str, str], float]:
    if kind == "lexical":
        return drift.lexical_similarity
    if not embeddings.available():
        pytest.skip("the offline embedder (the 'embed' extra) is not installed")
    sim = drift.from_settings("local")
    assert isinstance(sim, drift.EmbeddingSimilarity)
    assert sim.kind == "minilm"
    return functools.cache(sim)


@pytest.mark.parametrize("kind", ["minilm", "lexical"])
def test_paraphrases_read_well_above_another_persona(kind: str) -> None:
    sim, levels = similarity(kind), calibration.prior(kind)
    data = rows()
    para = [levels.calibrate(sim(r["answer"], p)) for r in data for p in paraphrases(r)]
    other = [levels.calibrate(sim(r["answer"], o)) for r in data for o in off_persona(r)]
    gap = statistics.fmean(para) - statistics.fmean(other)
    assert gap >= SEPARATION, (kind, statistics.fmean(para), statistics.fmean(other))


def checkin_drifts(kind: str, *, run_null: bool) -> list[float]:
    """Drift of every 3-probe check-in within one domain, the i-th paraphrase predicted
    for every probe (i = 0..3), no rating. With ``run_null`` the chance level is the
    run's own, as a check-in measures it: predictions against other probes' answers."""
    sim = similarity(kind)
    by_domain: dict[str, list[Row]] = defaultdict(list)
    for row in rows():
        by_domain[row["domain"]].append(row)
    drifts = []
    for domain in by_domain.values():
        for probes in itertools.combinations(domain, PROBES):
            for i in range(4):
                predictions = [paraphrases(r)[i] for r in probes]
                nulls = [
                    sim(pred, other["answer"])
                    for pred, probe in zip(predictions, probes, strict=True)
                    for other in domain
                    if other is not probe
                ]
                levels = calibration.levels(kind, nulls if run_null else [], [])
                assert levels.null_source == ("run" if run_null else "prior")
                agreements = [
                    levels.calibrate(sim(pred, probe["answer"]))
                    for pred, probe in zip(predictions, probes, strict=True)
                ]
                score = drift.drift_score(agreements)
                assert score is not None
                drifts.append(score)
    return drifts


@pytest.mark.parametrize("run_null", [False, True], ids=["priors", "run-null"])
@pytest.mark.parametrize("kind", ["minilm", "lexical"])
def test_a_checkin_of_faithful_paraphrases_does_not_warn(kind: str, run_null: bool) -> None:
    drifts = checkin_drifts(kind, run_null=run_null)
    assert len(drifts) == 240
    assert statistics.fmean(drifts) < WARN, (kind, run_null, statistics.fmean(drifts))
