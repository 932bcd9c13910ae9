"""Grammar-constrained sampling for the embedded model at the cost of a short list.

llama-cpp-python's sampler chain applies a JSON grammar before ``top_k``, to every
token of the vocabulary: Gemma 3's has 262,144, and checking each against the grammar
made a constrained token cost about three times a free one on the 2-core VM
(``benchmarks/README.md``, "The embedded model's grammar").

:class:`ShortlistGrammar` takes the grammar's place in the same chain and gives the same
candidates: it checks only the highest-scoring tokens against the grammar (the best 256,
then eight times as many, and so on), and stops as soon as ``keep`` of them pass, where
``keep`` is what the next stage keeps (``top_k``, or 1 for greedy decoding). The
``keep`` best tokens the grammar allows are then all in the list, so ``top_k`` and what
follows it see exactly what they saw before: with the same seed the reply is the same,
token for token (``tests/test_sampling.py`` checks it on the real model). Where fewer
pass, it checks the whole vocabulary, as before.

Only :func:`fast_llama_class` is public; it imports llama.cpp, so this module is imported
only when the embedded model loads.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals

from loopsim.interrupts import NATIVE_CALLBACKS

FIRST = 256  # tokens checked first; then eight times as many until enough pass
GROWTH = 8

# llama.cpp's llama_token_data: id, logit, p.
_TOKEN = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


def _bytes(array: Any) -> memoryview:
    """A ctypes array's memory, writable in place, for numpy to view."""
    return memoryview(array).cast("B")


class ShortlistGrammar:
    """A stage of a llama.cpp sampler chain: ``grammar`` over the best candidates first.

    It owns a llama.cpp grammar sampler of its own, which follows the reply through
    :meth:`accept` as the chain accepts each token, and is freed with the chain."""

    def __init__(self, model: Any, grammar: Any, keep: int) -> None:
        self.keep = max(1, keep)
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.grammar:
            raise ValueError("llama.cpp refused the grammar")

        def apply(_sampler: Any, candidates: Any) -> None:
            self._apply(candidates)

        def accept(_sampler: Any, token: int) -> None:
            llama_cpp.llama_sampler_accept(self.grammar, token)

        iface = llama_cpp.llama_sampler_i()
        iface.apply = llama_cpp.llama_sampler_i_apply(apply)
        iface.accept = llama_cpp.llama_sampler_i_accept(accept)
        iface.name = llama_cpp.llama_sampler_i_name(0)
        iface.reset = llama_cpp.llama_sampler_i_reset(0)
        iface.clone = llama_cpp.llama_sampler_i_clone(0)
        iface.free = llama_cpp.llama_sampler_i_free(0)
        self._callbacks = (apply, accept, iface)  # ctypes must keep them alive
        # A Ctrl-C inside them is sent again once they return (loopsim/interrupts.py).
        NATIVE_CALLBACKS.update((apply.__code__, accept.__code__))
        self.sampler = llama_cpp.llama_sampler()
        self.sampler.iface = ctypes.pointer(iface)
        self.sampler.ctx = None

    def _apply(self, candidates: Any) -> None:
        array = candidates.contents
        size = int(array.size)
        address = ctypes.addressof(array.data.contents)
        data = np.frombuffer(
            _bytes((llama_cpp.llama_token_data * size).from_address(address)), _TOKEN
        )
        logits = data["logit"]
        listed = FIRST
        while listed < size:
            best = np.argpartition(-logits, listed)[:listed]
            short = (llama_cpp.llama_token_data * listed)()
            np.frombuffer(_bytes(short), _TOKEN)[:] = data[best]
            sub = llama_cpp.llama_token_data_array(
                data=ctypes.cast(short, llama_cpp.llama_token_data_p),
                size=listed,
                selected=-1,
                sorted=False,
            )
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(sub))
            kept = np.frombuffer(_bytes(short), _TOKEN, count=int(sub.size))
            if np.count_nonzero(np.isfinite(kept["logit"])) >= self.keep:
                # The chain's candidates stay every token in id order; all but the
                # listed ones the grammar allows are ruled out, as the grammar would.
                logits[:] = -np.inf
                data["logit"][kept["id"]] = kept["logit"]
                return
            listed *= GROWTH
        llama_cpp.llama_sampler_apply(self.grammar, candidates)

    def free(self) -> None:
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


@functools.cache
def fast_llama_class() -> type:
    """``llama_cpp.Llama`` with :class:`ShortlistGrammar` in place of its grammar stage,
    for the sampling settings loopsim uses (temperature 0 or above, no mirostat, no
    logits processor); anything else keeps llama-cpp-python's own chain."""

    class FastGrammarLlama(llama_cpp.Llama):
        def _init_sampler(self, *args: Any, **kwargs: Any) -> Any:
            # llama-cpp-python passes its settings by name.
            settings = kwargs
            grammar = settings.get("grammar")
            temp = settings.get("temp", 0.80)
            top_k = settings.get("top_k", 40)
            if (
                args
                or grammar is None
                or settings.get("logits_processor") is not None
                or settings.get("mirostat_mode", 0)
                or temp < 0
                or (temp > 0 and top_k <= 0)  # no top_k: every allowed token counts
                # The private parts used here, as llama-cpp-python 0.3 has them; another
                # version without them keeps its own chain.
                or not hasattr(grammar, "_grammar")
                or not hasattr(grammar, "_root")
                or not hasattr(self._model, "vocab")
            ):
                return super()._init_sampler(*args, **kwargs)
            chain: Any = _internals.LlamaSampler()  # type: ignore[no-untyped-call]
            chain.add_penalties(
                n_vocab=self._n_vocab,
                penalty_last_n=self.last_n_tokens_size,
                penalty_repeat=settings.get("repeat_penalty", 1.0),
                penalty_freq=settings.get("frequency_penalty", 0.0),
                penalty_present=settings.get("presence_penalty", 0.0),
            )
            stage = ShortlistGrammar(self._model, grammar, 1 if temp == 0 else top_k)
            llama_cpp.llama_sampler_chain_add(chain.sampler, ctypes.pointer(stage.sampler))
            # Taken out of the chain before llama.cpp frees it (it is Python's), then freed.
            index = llama_cpp.llama_sampler_chain_n(chain.sampler) - 1
            chain.custom_samplers.append((index, stage))
            chain._exit_stack.callback(stage.free)
            if temp == 0:
                chain.add_greedy()
            else:
                chain.add_top_k(top_k)
                chain.add_typical(settings.get("typical_p", 1.0), 1)
                chain.add_top_p(settings.get("top_p", 0.95), 1)
                chain.add_min_p(settings.get("min_p", 0.05), 1)
                chain.add_temp(temp)
                chain.add_dist(self._seed)
            return chain

    return FastGrammarLlama
