"""Drift: how far the simulation's predictions sit from the real researcher's answers.

Per probe pair, agreement combines the human's 1-5 rating (when given) with an automatic
similarity between prediction and answer. A check-in's drift score is one minus the mean
agreement of its pairs; the trend is an exponentially weighted moving average over the
run's check-ins.

Similarity is pluggable: pass any langchain ``Embeddings`` to :class:`EmbeddingSimilarity`.
The offline default, :func:`lexical_similarity`, is the cosine of word-count vectors: crude,
but it needs no model and no network.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Similarity = Callable[[str, str], float]

_WORD = re.compile(r"[^\W_]{3,}", re.UNICODE)
EWMA_ALPHA = 0.5


def _bag(text: str) -> Counter[str]:
    return Counter(w.lower() for w in _WORD.findall(text))


def lexical_similarity(a: str, b: str) -> float:
    """Cosine similarity of the two texts' word counts, in [0, 1]."""
    va, vb = _bag(a), _bag(b)
    if not va or not vb:
        return 0.0
    dot = sum(count * vb[word] for word, count in va.items())
    norm = math.sqrt(sum(c * c for c in va.values())) * math.sqrt(sum(c * c for c in vb.values()))
    return min(1.0, dot / norm)


class EmbeddingSimilarity:
    """Cosine similarity from any langchain ``Embeddings``, clipped to [0, 1]."""

    def __init__(self, embeddings: Any) -> None:
        self.embeddings = embeddings

    def __call__(self, a: str, b: str) -> float:
        va, vb = self.embeddings.embed_documents([a, b])
        dot = sum(x * y for x, y in zip(va, vb, strict=True))
        norm = math.sqrt(sum(x * x for x in va)) * math.sqrt(sum(y * y for y in vb))
        return max(0.0, min(1.0, dot / norm)) if norm else 0.0


def from_settings(name: str | None) -> Similarity:
    """The similarity a user configured: langchain ``init_embeddings(name)``, or the
    offline default when ``name`` is unset."""
    if not name:
        return lexical_similarity
    from langchain.embeddings import init_embeddings

    from loopsim.errors import ModelUnavailable

    try:
        return EmbeddingSimilarity(init_embeddings(name))
    except Exception as exc:  # the embeddings seam
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot build embeddings {name}: {first}"[:500]) from None


def agreement(similarity: float, rating: int | None) -> float:
    """Half the human's rating (1-5 mapped to 0-1), half the similarity; or the
    similarity alone when the human gave no rating."""
    if rating is None:
        return similarity
    return 0.5 * ((rating - 1) / 4) + 0.5 * similarity


def drift_score(agreements: Sequence[float]) -> float | None:
    if not agreements:
        return None
    return 1.0 - sum(agreements) / len(agreements)


def ewma(scores: Sequence[float], alpha: float = EWMA_ALPHA) -> float | None:
    trend: float | None = None
    for score in scores:
        trend = score if trend is None else alpha * score + (1 - alpha) * trend
    return trend


@dataclass(frozen=True)
class DriftLevel:
    score: float | None
    trend: float | None
    level: str  # "ok" | "warn" | "alarm" | "unknown"


def classify(score: float | None, trend: float | None, warn: float, alarm: float) -> DriftLevel:
    if score is None:
        return DriftLevel(score, trend, "unknown")
    worst = max(score, trend if trend is not None else score)
    level = "alarm" if worst >= alarm else "warn" if worst >= warn else "ok"
    return DriftLevel(score, trend, level)
