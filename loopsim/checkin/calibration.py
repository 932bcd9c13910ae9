"""Calibrated agreement: a raw similarity mapped onto [0, 1] between chance and the ceiling.

A raw cosine means nothing on its own. On the labelled set the word-count cosine gives a
faithful paraphrase about 0.34 and another persona's answer to the same question about
0.11; the offline MiniLM embedder gives the same pairs 0.62 and 0.33. So each raw
similarity ``s`` of a prediction to the human's answer is read against two levels
measured with the same similarity:

- the **null** level: how similar the human's answers to *different* probes of the run
  are to each other (chance: the right register, the wrong question);
- the **ceiling**: how similar the human's own answers to the same question are to each
  other, measured by retests (a person re-asked later paraphrases themselves).

    agreement = clip((s - null) / (ceiling - null), 0, 1)

so a prediction as close to the answer as the human's own retest reads 1, and one no
closer than an answer to another question reads 0, whatever the similarity. Until a run
has measured a level, the similarity's prior stands in for it: the levels measured on the
labelled set in ``benchmarks/data/drift_labelled.jsonl`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

# Below this gap between ceiling and null the ratio is noise, so the prior's gap is used.
MIN_GAP = 0.05
# Fewer cross-probe pairs than this and the run's null is too noisy to trust.
MIN_NULL_PAIRS = 4


@dataclass(frozen=True)
class Levels:
    """Chance and ceiling for one similarity, and where each came from."""

    null: float
    ceiling: float
    null_source: str = "prior"  # "prior" | "run"
    ceiling_source: str = "prior"  # "prior" | "retest"

    def calibrate(self, similarity: float) -> float:
        """``similarity`` as a fraction of the way from chance to the ceiling."""
        gap = self.ceiling - self.null
        if gap < MIN_GAP:
            gap = MIN_GAP
        return max(0.0, min(1.0, (similarity - self.null) / gap))


# Priors by similarity kind, measured on the 66 probes of the labelled set
# (benchmarks/calibrate_bench.py, table in benchmarks/README.md): null is the mean
# similarity of an answer to the answers of the other questions of its domain (1,386
# pairs); ceiling is the median similarity of an answer to its four faithful paraphrases
# (264 pairs).
PRIORS: dict[str, Levels] = {
    "lexical": Levels(null=0.11, ceiling=0.33),
    "minilm": Levels(null=0.29, ceiling=0.63),
}
# For an embedder nobody measured here (a hosted model): typical of sentence embedders.
GENERIC = Levels(null=0.15, ceiling=0.65)


def prior(kind: str) -> Levels:
    return PRIORS.get(kind, GENERIC)


def levels(kind: str, null_samples: Sequence[float], retest_samples: Sequence[float]) -> Levels:
    """The levels for a run: its own where it has measured enough, the prior elsewhere.

    ``null_samples`` are similarities of the human's answers to their answers to other
    probes;
    ``retest_samples`` similarities of the human's retest answers to their first answers.
    A measured ceiling below the null (a human who contradicts themselves) keeps the
    prior's gap above the null rather than inverting the scale.
    """
    base = prior(kind)
    null, null_source = base.null, "prior"
    if len(null_samples) >= MIN_NULL_PAIRS:
        null, null_source = statistics.fmean(null_samples), "run"
    ceiling, ceiling_source = base.ceiling + (null - base.null), "prior"
    if retest_samples:
        measured = statistics.fmean(retest_samples)
        if measured - null >= MIN_GAP:
            ceiling, ceiling_source = measured, "retest"
    return Levels(null, ceiling, null_source, ceiling_source)


def rating_agreement(rating: int) -> float:
    """A 1-5 rating (the human's or the judge's) on the same [0, 1] scale."""
    return (rating - 1) / 4


def pair_agreement(calibrated: float | None, rating: int | None, judge: int | None) -> float | None:
    """One pair's agreement: the human's rating when given, else the judge's, else the
    calibrated similarity. The human has read both texts and knows their own stance;
    a similarity measures topic, so it is the last resort, not a vote beside them."""
    if rating is not None:
        return rating_agreement(rating)
    if judge is not None:
        return rating_agreement(judge)
    return calibrated
