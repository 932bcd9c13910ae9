"""Drift: how far the simulation's predictions sit from the real researcher's answers.

Per probe pair, agreement is the human's 1-5 rating when given, else a judge's, else the
similarity of prediction and answer calibrated between chance and the human's ceiling
(:mod:`loopsim.checkin.scoring`, :mod:`loopsim.checkin.calibration`). A check-in's drift
score is one minus the mean agreement of its pairs; the trend is an exponentially
weighted moving average over the run's check-ins.

Similarity is pluggable: pass any langchain ``Embeddings`` to :class:`EmbeddingSimilarity`.
:func:`from_settings` picks the configured one: by default the offline sentence embedder of
the ``embed`` extra (loopsim.chat.embeddings); without that extra, :func:`lexical_similarity`,
the cosine of word-count vectors: crude, but it needs no model and no network.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loopsim.errors import LoopsimError, ModelUnavailable

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings

    from loopsim.config import Settings

Similarity = Callable[[str, str], float]

_WORD = re.compile(r"[^\W_]{3,}", re.UNICODE)
EWMA_ALPHA = 0.5


@functools.lru_cache(maxsize=256)
def _bag(text: str) -> Counter[str]:
    """The text's word counts, kept for the last 256 texts: the daily charter-drift test
    compares the charter with the same few days' texts each day while its windows slide
    by one. Shared, so never changed by a caller."""
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
    """Cosine similarity from any langchain ``Embeddings``, clipped to [0, 1].

    Give it the embeddings, or a ``factory`` that builds them: then nothing is built until
    the first comparison, so a command that scores nothing never loads a model or opens a
    connection. A factory that fails raises its error (a one-line ``ModelUnavailable``) at
    that first comparison, and again at the next one. Vectors are kept for the last
    ``cache_size`` distinct texts, since one prediction is compared with several answers.
    """

    def __init__(
        self,
        embeddings: Embeddings | None = None,
        *,
        factory: Callable[[], Embeddings] | None = None,
        name: str = "embeddings",
        cache_size: int = 512,
    ) -> None:
        if (embeddings is None) == (factory is None):
            raise ValueError("give either embeddings or a factory")
        self._embeddings = embeddings
        self._factory = factory
        self.name = name
        self.cache_size = cache_size
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        """Which calibration priors apply (see checkin/calibration.py): the offline
        MiniLM's own, or the generic ones under the embedder's name."""
        return "minilm" if self.name.lower() in (n.lower() for n in OFFLINE_NAMES) else self.name

    @property
    def built(self) -> bool:
        return self._embeddings is not None

    @property
    def embeddings(self) -> Embeddings:
        """The embeddings, built on first use."""
        if self._embeddings is None:
            with self._lock:
                if self._embeddings is None:
                    assert self._factory is not None
                    self._embeddings = self._factory()
        return self._embeddings

    def vectors(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text; texts seen recently come from the cache."""
        with self._lock:
            known = {t: self._cache[t] for t in texts if t in self._cache}
            for text in known:
                self._cache.move_to_end(text)
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        if missing:
            embeddings = self.embeddings
            try:
                fresh = embeddings.embed_documents(missing)
            except LoopsimError:
                raise
            except Exception as exc:  # the embeddings seam: a provider's own errors
                raise ModelUnavailable(
                    f"embeddings {self.name} failed: {_first_line(exc)}"[:500]
                ) from None
            known.update(zip(missing, fresh, strict=True))
            with self._lock:
                self._cache.update((t, known[t]) for t in missing)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return [known[t] for t in texts]

    def __call__(self, a: str, b: str) -> float:
        va, vb = self.vectors([a, b])
        dot = sum(x * y for x, y in zip(va, vb, strict=True))
        norm = math.sqrt(sum(x * x for x in va)) * math.sqrt(sum(y * y for y in vb))
        return max(0.0, min(1.0, dot / norm)) if norm else 0.0


OFFLINE_NAMES = ("local", "onnx:all-MiniLM-L6-v2")
"""``LOOPSIM_EMBEDDINGS`` values that choose the built-in offline embedder."""
LEXICAL_NAME = "lexical"
"""``LOOPSIM_EMBEDDINGS=lexical`` forces the word-count cosine."""

_log = logging.getLogger(__name__)
_fallback_warned = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _warn_lexical_fallback() -> None:
    """Say once per process, as one logged warning, that similarity is only lexical."""
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    _log.warning(
        "warning: probe similarity falls back to a word-count cosine; "
        "pip install 'loopsim[embed]' for the offline sentence embedder "
        "(LOOPSIM_EMBEDDINGS=lexical keeps the cosine and silences this)"
    )


def _offline() -> Embeddings:
    from loopsim.chat.embeddings import OfflineEmbeddings, model_files

    model_files()  # the one-line ModelUnavailable naming the extra, if it is missing
    return OfflineEmbeddings()


def _langchain(name: str, api_key: str | None, base_url: str | None) -> Embeddings:
    """``init_embeddings(name)`` with the chat model's key and base URL."""
    provider = name.split(":", 1)[0] if ":" in name else ""
    kwargs: dict[str, Any] = {}
    if base_url:
        kwargs["base_url"] = base_url
    if api_key is not None:
        kwargs["api_key"] = api_key
    elif base_url and provider == "openai":
        kwargs["api_key"] = "not-needed"  # local OpenAI-compatible servers never check it
    if base_url and provider == "openai":
        # Send the texts themselves: token ids (langchain-openai's default) need tiktoken's
        # tables, fetched from the network on first use, and compatible servers want text.
        kwargs["check_embedding_ctx_length"] = False
    try:
        from langchain.embeddings import init_embeddings

        return init_embeddings(name, **kwargs)
    except Exception as exc:  # the embeddings seam
        raise ModelUnavailable(
            f"cannot build embeddings {name}: {_first_line(exc)}"[:500]
        ) from None


def from_settings(settings: Settings | str | None) -> Similarity:
    """The similarity a user configured with ``LOOPSIM_EMBEDDINGS``, built lazily.

    - unset: the offline embedder (all-MiniLM-L6-v2, the ``embed`` extra) when installed,
      else the word-count cosine, with one warning per process (logged, to stderr);
    - ``local`` or ``onnx:all-MiniLM-L6-v2``: the offline embedder, or ModelUnavailable at
      the first comparison if the extra is missing;
    - ``lexical``: the word-count cosine;
    - any other name, e.g. ``openai:text-embedding-3-small``: langchain ``init_embeddings``
      with ``LOOPSIM_API_KEY`` and ``LOOPSIM_MODEL_BASE_URL`` when set.

    Given a bare name (or None) instead of :class:`Settings`, no key or base URL is passed.
    """
    if settings is None or isinstance(settings, str):
        name, api_key, base_url = settings, None, None
    else:
        name = settings.embeddings
        api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        base_url = settings.model_base_url
    name = (name or "").strip()
    if name.lower() == LEXICAL_NAME:
        return lexical_similarity
    if not name:
        from loopsim.chat import embeddings

        if not embeddings.available():
            _warn_lexical_fallback()
            return lexical_similarity
        return EmbeddingSimilarity(factory=_offline, name=OFFLINE_NAMES[1])
    if name.lower() in (n.lower() for n in OFFLINE_NAMES):
        return EmbeddingSimilarity(factory=_offline, name=name)
    return EmbeddingSimilarity(factory=lambda: _langchain(name, api_key, base_url), name=name)


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
