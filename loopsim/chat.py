"""The only place a chat model is built.

A model id is ``provider:name``:

- ``llamacpp:gemma3-270m`` (the offline default) or ``llamacpp:/path/to/model.gguf``;
- anything langchain's ``init_chat_model`` resolves: ``openai:gpt-4o-mini``,
  ``anthropic:claude-...``, ``ollama:llama3``; with a base URL, ``openai:NAME`` talks to
  any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama's ``/v1``).

:class:`ChatHandle` hides how each provider is asked for JSON: llama.cpp decodes against
the JSON schema, OpenAI-compatible servers get ``response_format``, and every reply is
validated by the caller regardless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from loopsim.config import Settings
from loopsim.errors import ModelUnavailable
from loopsim.schemas import ModelSpec


@dataclass(frozen=True)
class Reply:
    text: str
    tokens_in: int | None
    tokens_out: int | None
    model_version: str
    latency_ms: int


class ChatHandle:
    """A built chat model plus how to ask it for schema-shaped JSON."""

    def __init__(
        self, model_id: str, model: BaseChatModel, *, structured: str = "none", version: str = ""
    ) -> None:
        self.model_id = model_id
        self.model = model
        self.structured = structured  # "llamacpp" | "openai" | "none"
        self.version = version or model_id

    def complete(
        self,
        messages: list[BaseMessage],
        schema: dict[str, Any] | None,
        *,
        seed: int | None = None,
    ) -> Reply:
        """One call. With ``schema``, ask for JSON in that shape; without, for plain text."""
        kwargs: dict[str, Any] = {}
        if self.structured == "llamacpp":
            if schema is not None:
                kwargs["json_schema"] = schema
            if seed is not None:
                kwargs["seed"] = seed
        elif self.structured == "openai" and schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "DayReport", "schema": schema},
            }
        started = time.perf_counter()
        try:
            message = self.model.invoke(messages, **kwargs)
        except ModelUnavailable:
            raise
        except Exception as exc:  # the model seam: every foreign failure becomes ours
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelUnavailable(
                f"model {self.model_id} failed: {type(exc).__name__}: {detail}"[:500]
            ) from exc
        latency = int((time.perf_counter() - started) * 1000)
        usage = getattr(message, "usage_metadata", None) or {}
        meta = getattr(message, "response_metadata", None) or {}
        version = str(meta.get("model_name") or meta.get("model") or self.version)
        if meta.get("system_fingerprint"):
            version += f" ({meta['system_fingerprint']})"
        return Reply(
            text=message.text,
            tokens_in=usage.get("input_tokens"),
            tokens_out=usage.get("output_tokens"),
            model_version=version,
            latency_ms=latency,
        )


ChatFactory = Callable[[str, ModelSpec, int], ChatHandle]
"""Builds a handle from (model id, model spec, max output tokens)."""


def build_chat(settings: Settings) -> ChatFactory:
    """The production factory, closed over the settings (keys, base URL, threads)."""

    def factory(model_id: str, spec: ModelSpec, max_tokens: int) -> ChatHandle:
        provider, _, name = model_id.partition(":")
        if not name:
            raise ModelUnavailable(f"model {model_id!r} must look like 'provider:name'")
        if provider == "llamacpp":
            from loopsim.llamacpp import LlamaCppChat, resolve_gguf

            path, identity = resolve_gguf(name)
            model = LlamaCppChat(
                model_path=str(path),
                identity=identity,
                n_ctx=settings.llama_ctx,
                n_threads=settings.llama_threads,
                temperature=spec.temperature,
                repeat_penalty=spec.repeat_penalty,
                max_tokens=max_tokens,
            )
            return ChatHandle(model_id, model, structured="llamacpp", version=model.version)
        return _init_langchain(model_id, provider, spec, max_tokens, settings)

    return factory


def _init_langchain(
    model_id: str, provider: str, spec: ModelSpec, max_tokens: int, settings: Settings
) -> ChatHandle:
    from langchain.chat_models import init_chat_model

    kwargs: dict[str, Any] = {
        "temperature": spec.temperature,
        "max_tokens": max_tokens,
        "timeout": settings.model_timeout,
    }
    kwargs.update(spec.params)
    base_url = spec.base_url or settings.model_base_url
    if base_url:
        kwargs["base_url"] = base_url
    if settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    elif base_url and provider == "openai":
        # Local OpenAI-compatible servers want some key, and never check it.
        kwargs["api_key"] = "not-needed"
    try:
        model = init_chat_model(model_id, **kwargs)
    except ImportError as exc:
        raise ModelUnavailable(
            f"provider {provider!r} needs its langchain package ({exc.name or exc}); "
            f"pip install langchain-{provider}"
        ) from None
    except Exception as exc:  # the model seam
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot build model {model_id}: {first}"[:500]) from None
    structured = "openai" if provider == "openai" else "none"
    return ChatHandle(model_id, model, structured=structured, version=model_id)
