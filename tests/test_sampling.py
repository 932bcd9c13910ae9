"""The embedded model's grammar stage (loopsim/chat/sampling.py), on the real model."""

from __future__ import annotations

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

from loopsim.chat.llamacpp import resolve_gguf, schema_grammar, silence_native_logs  # noqa: E402
from loopsim.chat.sampling import fast_llama_class  # noqa: E402
from loopsim.researcher.conversation import grammar_schema  # noqa: E402

pytestmark = pytest.mark.integration


def replies(cls: type, max_tokens: int) -> list[str]:
    silence_native_logs()
    path, _ = resolve_gguf("gemma3-270m")
    llama = cls(model_path=str(path), n_ctx=1024, chat_format="gemma", verbose=False)
    messages = [{"role": "user", "content": "Write today's notes on waggle dances as JSON."}]
    out = []
    for temperature, seed in ((0.0, 1), (0.7, 2)):  # greedy, and sampled from the top 40
        result = llama.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            repeat_penalty=1.15,
            seed=seed,
            grammar=schema_grammar(grammar_schema()),
        )
        out.append(result["choices"][0]["message"]["content"])
    llama.close()
    return out


def test_the_shortlist_grammar_gives_the_stock_chains_reply_token_for_token():
    """Checked over the best candidates first, the day's JSON grammar gives exactly the
    reply of llama-cpp-python's own grammar-first chain with the same seed and settings,
    greedy and sampled."""
    assert replies(fast_llama_class(), 24) == replies(llama_cpp.Llama, 24)
