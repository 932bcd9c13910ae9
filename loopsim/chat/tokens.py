"""Token counts for budgets, as the model that will read the text counts them.

:func:`counter_for` picks a :class:`TokenCounter` by model id, once per model and process:

- ``llamacpp:`` models: llama.cpp's own tokenizer, the GGUF loaded vocabulary-only (no
  weights, a fraction of a second), so a count is the model's count, and a whole prompt
  is counted through the same chat template llama-cpp-python applies;
- everything else: :func:`estimate_tokens`, an offline estimate that over-counts.
  A bundled BPE for OpenAI's names would be exact, but ``tiktoken`` fetches its
  encodings over the network the first time it is asked, and loopsim runs offline.

The estimate is the larger of two counts: a third of the UTF-8 bytes (close on English
prose) and a count of pieces that text like code, JSON, tables, LaTeX and numbers cost:
every digit, every punctuation mark or symbol, every line break and run of indentation,
and every word, a long or mixed-case one as several. ``benchmarks/token_estimate.py``
checks it against Gemma's real tokenizer on seeded samples of each kind; it was at or
above the real count on every one (figures in ``benchmarks/README.md``).

Nothing here imports llama.cpp or langchain until a ``llamacpp:`` counter is built.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from typing import Any

from loopsim.errors import LoopsimError

# What a chat template adds, for the estimate: a few tokens per message (role markers and
# separators) and a few for the reply's opening.
MESSAGE_OVERHEAD = 8
REPLY_OVERHEAD = 8
CACHED_TEXTS = 4096

# Pieces, as Gemma's tokenizer splits what a byte count misses: every digit, and a space
# before one (a token of its own); every ASCII symbol; every other non-ASCII character
# and a space before it; a line break; a run of spaces or tabs (indentation, padding); a
# capital letter that does not start a word (hashes, ids); and every word, once more for
# each WORD_CHARS letters past the first. Then an eighth more, as a margin.
WORD_CHARS = 6
_PIECES = re.compile(
    rf"[a-z]{{1,{WORD_CHARS}}}|[A-Z][a-z]{{0,{WORD_CHARS - 1}}}"
    r"|[^\x00-\x7f]|\d| (?=\d|[^\x00-\x7f])|[^\w\s]|\n|_|[ \t]{2,}"
)


def estimate_tokens(text: str) -> int:
    """An offline token count that is at least the real one on prose, code, JSON, tables,
    LaTeX and numbers: the larger of a third of the UTF-8 bytes and the piece count."""
    if not text:
        return 0
    by_bytes = (len(text.encode("utf-8")) + 2) // 3
    pieces = len(_PIECES.findall(text))
    # An eighth more for what the pieces miss: a run of hex letters or random capitals
    # splits further than one word (measured up to 5% under on hashes).
    return max(by_bytes, pieces + pieces // 8)


# A view counts the same entries day after day, and the estimate's pattern costs about
# a microsecond a dozen bytes: remember the recent ones.
_cached_estimate = functools.lru_cache(maxsize=CACHED_TEXTS)(estimate_tokens)


class TokenCounter:
    """Counts tokens as one model would. The base class is the offline estimate.

    ``exact`` is true when counts are the model's own tokenizer's."""

    name = "estimate"
    exact = False

    def count(self, text: str) -> int:
        return _cached_estimate(text)

    def count_prompt(self, messages: Sequence[tuple[str, str]]) -> int:
        """Tokens of a whole chat prompt, ``(role, content)`` pairs, with its template."""
        body = sum(self.count(content) + MESSAGE_OVERHEAD for _, content in messages)
        return body + REPLY_OVERHEAD


ESTIMATE = TokenCounter()


class LlamaVocabCounter(TokenCounter):
    """llama.cpp's tokenizer for one GGUF, loaded vocabulary-only."""

    exact = True

    def __init__(self, model_path: str, chat_format: str, name: str) -> None:
        from llama_cpp import Llama

        from loopsim.chat.llamacpp import silence_native_logs

        silence_native_logs()
        self.name = name
        self.chat_format = chat_format
        self._llama: Any = Llama(model_path=model_path, vocab_only=True, verbose=False)
        self._lock = threading.Lock()
        # The same entries are counted day after day (and again when a view is rebuilt),
        # and llama.cpp takes about a millisecond a KB: remember the recent ones.
        self._count = functools.lru_cache(maxsize=CACHED_TEXTS)(self._count_text)

    def _tokens(self, text: str, *, bos: bool, special: bool) -> int:
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=bos, special=special))

    def _count_text(self, text: str) -> int:
        return self._tokens(text, bos=False, special=False) if text else 0

    def count(self, text: str) -> int:
        return int(self._count(text))

    def count_prompt(self, messages: Sequence[tuple[str, str]]) -> int:
        """The prompt exactly as :class:`~loopsim.chat.llamacpp.LlamaCppChat` sends it:
        system text folded for formats without a system role, then the chat format's
        template, tokenized with special tokens and a BOS as llama-cpp-python does."""
        from llama_cpp import llama_chat_format

        from loopsim.chat.llamacpp import fold_system

        payload = fold_system(
            [{"role": role, "content": content} for role, content in messages], self.chat_format
        )
        formatter = getattr(llama_chat_format, "format_" + self.chat_format.replace("-", ""), None)
        if formatter is None:  # a format without a Python formatter: pad like the estimate
            return super().count_prompt(messages)
        result = formatter(messages=payload)
        return self._tokens(result.prompt, bos=not result.added_special, special=True)


@functools.cache
def counter_for(model_id: str) -> TokenCounter:
    """The counter for ``model_id``, built once per process.

    A ``llamacpp:`` model whose tokenizer cannot be loaded here (no ``local`` extra, no
    such file) gets the estimate: building the model itself then fails with the reason."""
    provider, _, name = model_id.partition(":")
    if provider.strip().lower() == "llamacpp" and name:
        try:
            from loopsim.chat.llamacpp import LlamaCppChat, resolve_gguf

            path, identity = resolve_gguf(name)
            chat_format = LlamaCppChat.model_fields["chat_format"].default
            return LlamaVocabCounter(str(path), chat_format, identity)
        except (ImportError, LoopsimError, OSError, ValueError, RuntimeError):
            return ESTIMATE
    return ESTIMATE


def prompt_limit(model_id: str, n_ctx: int, reply_tokens: int) -> int | None:
    """The most tokens a whole prompt to ``model_id`` may take, or None where loopsim does
    not know the model's context (hosted and OpenAI-compatible models).

    The embedded model's context (``n_ctx``, ``LOOPSIM_LLAMA_CTX``) holds the prompt and
    the reply both; llama.cpp cuts a reply short, silently, when the two would not fit."""
    if model_id.partition(":")[0].strip().lower() != "llamacpp":
        return None
    return n_ctx - reply_tokens - 1
