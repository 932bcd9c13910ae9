"""The only place a chat model is built.

A model id is ``provider:name``:

- ``llamacpp:gemma3-270m`` (the offline default) or ``llamacpp:/path/to/model.gguf``;
- anything langchain's ``init_chat_model`` resolves: ``openai:gpt-4o-mini``,
  ``anthropic:claude-...``, ``ollama:llama3``; with a base URL, ``openai:NAME`` talks to
  any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama's ``/v1``), through
  loopsim's light client (:mod:`loopsim.chat.compat`) unless
  ``LOOPSIM_OPENAI_CLIENT=langchain``.

:class:`ChatHandle` hides how each provider is asked for JSON: llama.cpp decodes against
the JSON schema, OpenAI-compatible servers get ``response_format``, and every reply is
validated by the caller regardless.

Endpoint faults are retried here, with tenacity: 408, 409, 429 and 5xx replies, timeouts,
refused or reset connections, truncated or stalled bodies and garbled JSON. Waits grow
exponentially with jitter, and a ``Retry-After`` header is honoured (up to the cap). A
client error such as 400 or 401 is not retried: asking again cannot help. Neither is a
server that refuses the ``response_format`` it was sent (some answer 500 for it, as
llama-cpp-python's server does for json_schema): the error says, in one line, which
setting to use instead (:meth:`ChatHandle.format_refused`).

A call made while a conversation runs under a trace (:mod:`loopsim.chat.tracing`) is
nested under it, named by its role; with no tracer on, calls are made as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
)

from loopsim.chat.faults import (
    FORMAT_FALLBACK,
    FORMAT_WORDS,
    RetryPolicy,
    connection_refused,
    error_text,
    is_transient,
    status_of,
)
from loopsim.chat.tracing import call_config
from loopsim.config import Settings
from loopsim.errors import LoopsimError, ModelUnavailable, SpecError
from loopsim.schemas import ModelSpec
from loopsim.text import loggable


@dataclass(frozen=True)
class Reply:
    """One call's reply. ``latency_ms`` is the call's wall time and ``requests`` the
    requests it took, endpoint retries (and their waits) included."""

    text: str
    tokens_in: int | None
    tokens_out: int | None
    model_version: str
    latency_ms: int
    requests: int = 1
    folded: bool = False  # sent with system text folded into the first user turn


# The shortest API key redacted from error text (see ChatHandle.secrets).
MIN_SECRET_CHARS = 8


def _requests(retrying: Retrying | AsyncRetrying) -> int:
    """How many requests one call took: tenacity's count of its attempts."""
    return int(retrying.statistics.get("attempt_number", 1))


def fold_system_text(messages: list[BaseMessage]) -> list[BaseMessage]:
    """System text moved to the head of the next user turn, as the embedded path does for
    chat formats without a system role: for servers that would drop it silently."""
    folded: list[BaseMessage] = []
    pending: list[str] = []
    for message in messages:
        if message.type == "system":
            pending.append(message.text)
            continue
        if pending and message.type == "human":
            message = HumanMessage("\n\n".join([*pending, message.text]))
            pending = []
        folded.append(message)
    if pending:
        folded.insert(0, HumanMessage("\n\n".join(pending)))
    return folded


def _traced(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus the ``config`` that nests the call under its conversation's trace,
    when one is on (see :mod:`loopsim.chat.tracing`)."""
    config = call_config()
    return {**kwargs, "config": config} if config is not None else kwargs


OnRetry = Callable[[BaseException, float], None]
"""Told of each retry: the error, and the seconds until the next attempt."""


class ChatHandle:
    """A built chat model plus how to ask it for schema-shaped JSON, with retries."""

    def __init__(
        self,
        model_id: str,
        model: BaseChatModel,
        *,
        structured: str = "none",
        version: str = "",
        retry: RetryPolicy | None = None,
        secrets: Sequence[str] = (),
        base_url: str | None = None,
        send_seed: bool = False,
        fold_system: bool = False,
    ) -> None:
        self.model_id = model_id
        # Fold system text into the first user turn before every call (see fold_system_text).
        self.fold_system = fold_system
        # Send the sampling seed to an API that takes one (OpenAI's and the compatible
        # servers'): each validation retry asks with another seed, so a retried day is not
        # the same failed reply again.
        self.send_seed = send_seed
        self.base_url = base_url
        self.model = model
        self.structured = structured  # "llamacpp" | "openai" | "openai-json-object" | "none"
        self.version = version or model_id
        self.retry = retry or RetryPolicy(attempts=1)
        self.on_retry: OnRetry | None = None
        # Keys to blank out of error text: some endpoints echo the key they were sent.
        # Only keys long enough to be secrets: blanking a short one (LOOPSIM_API_KEY=x, a
        # placeholder for a local server that checks none) would blank every "x" of the
        # message and hide the error, and a key that short protects nothing anyway.
        self.secrets = tuple(s for s in secrets if len(s) >= MIN_SECRET_CHARS)

    def _kwargs(self, schema: dict[str, Any] | None, seed: int | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.send_seed and seed is not None:
            kwargs["seed"] = seed
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
        elif self.structured == "openai-json-object" and schema is not None:
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        return kwargs

    def format_refused(self, exc: BaseException) -> tuple[str, str] | None:
        """(what was sent, what to set instead) if ``exc`` is the server refusing the
        ``response_format`` it was sent; None for any other error."""
        if self.structured not in FORMAT_FALLBACK:
            return None
        status = status_of(exc)
        if status is None or status < 400:
            return None
        text = error_text(exc).lower()
        if not any(word in text for word in FORMAT_WORDS):
            return None
        return FORMAT_FALLBACK[self.structured]

    def _transient(self, exc: BaseException) -> bool:
        return is_transient(exc) and self.format_refused(exc) is None

    def _retrying_options(self) -> dict[str, Any]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if self.on_retry is not None and exc is not None:
                self.on_retry(exc, state.upcoming_sleep)

        return {
            "retry": retry_if_exception(self._transient),
            "stop": stop_after_attempt(max(1, self.retry.attempts)),
            "wait": self.retry.wait,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def _failed(self, exc: Exception, attempts: int, started: float) -> ModelUnavailable:
        error = self._unavailable(exc, attempts)
        error.attempts = attempts
        error.latency_ms = int((time.perf_counter() - started) * 1000)
        error.folded = self.fold_system
        return error

    def _unavailable(self, exc: Exception, attempts: int) -> ModelUnavailable:
        # All of it, on one line: a server's reason often follows a first line such as
        # "1 validation error:". An endpoint's error text is stored with the failed day
        # and logged.
        detail = loggable(error_text(exc))
        status = status_of(exc)
        what = f"HTTP {status}" if status is not None else type(exc).__name__
        if status is not None and status < 300:
            what = f"unreadable reply (HTTP {status})"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        message = f"model {self.model_id} failed{tries}: {what}: {detail}"
        if self.base_url and connection_refused(exc):
            # Nothing listens there: say where, and what would fix it.
            message = (
                f"model {self.model_id} failed{tries}: nothing answers at {self.base_url} "
                "(connection refused); start the server there, or point "
                "LOOPSIM_MODEL_BASE_URL (or the spec's [model] base_url) at one that runs"
            )
        refused = self.format_refused(exc)
        if refused is not None:
            sent, instead = refused
            where = f" at {self.base_url}" if self.base_url else ""
            message = (
                f"model {self.model_id}: the server{where} refuses response_format {sent}; "
                f"set LOOPSIM_RESPONSE_FORMAT={instead} (or the spec's [model] "
                f'response_format = "{instead}"). It said: {what}: {detail}'
            )
        return ModelUnavailable(self.redact(loggable(message))[:500])

    def _reply(self, message: Any, started: float, requests: int) -> Reply:
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
            requests=requests,
            folded=self.fold_system,
        )

    def complete(
        self,
        messages: list[BaseMessage],
        schema: dict[str, Any] | None,
        *,
        seed: int | None = None,
    ) -> Reply:
        """One call, retried on endpoint faults. With ``schema``, ask for JSON in that
        shape; without, for plain text."""
        kwargs = self._kwargs(schema, seed)
        if self.fold_system:
            messages = fold_system_text(messages)
        started = time.perf_counter()
        retrying = Retrying(**self._retrying_options())
        try:
            message = retrying(self.model.invoke, messages, **_traced(kwargs))
        except ModelUnavailable as exc:  # the model's own (the embedded one's load, say)
            exc.folded = self.fold_system
            raise
        except LoopsimError:  # ours: a lease found lost before a retry (loopsim serve)
            raise
        except Exception as exc:  # the model seam: every foreign failure becomes ours
            raise self._failed(exc, _requests(retrying), started) from exc
        return self._reply(message, started, _requests(retrying))

    async def acomplete(
        self,
        messages: list[BaseMessage],
        schema: dict[str, Any] | None,
        *,
        seed: int | None = None,
    ) -> Reply:
        """:meth:`complete` without blocking the event loop."""
        kwargs = self._kwargs(schema, seed)
        if self.fold_system:
            messages = fold_system_text(messages)
        started = time.perf_counter()
        retrying = AsyncRetrying(**self._retrying_options())
        try:
            message: Any = await retrying(self.model.ainvoke, messages, **_traced(kwargs))
        except ModelUnavailable as exc:  # the model's own (the embedded one's load, say)
            exc.folded = self.fold_system
            raise
        except LoopsimError:  # ours: a lease found lost before a retry (loopsim serve)
            raise
        except Exception as exc:  # the model seam
            raise self._failed(exc, _requests(retrying), started) from exc
        return self._reply(message, started, _requests(retrying))


def langchain_providers() -> frozenset[str]:
    """The providers langchain's ``init_chat_model`` can build (its own table)."""
    from langchain.chat_models import base

    # A private table, so an older langchain's name for it is tried too.
    table: Any = getattr(base, "_BUILTIN_PROVIDERS", None) or getattr(
        base, "_SUPPORTED_PROVIDERS", ()
    )
    return frozenset(str(name) for name in table)


def check_model_id(model_id: str, source: str = "model") -> None:
    """Refuse a model id this seam could never build, without building it: no network
    call is made and no weights are loaded. ``source`` names where the id came from.

    The provider must be ``llamacpp`` or one langchain knows; a ``llamacpp`` name must be
    a model loopsim ships or an existing GGUF file. Whether a hosted model exists, or its
    provider's package is installed on the machine that will step the run, is only
    known when it is called."""
    from loopsim.chat.llamacpp import BUILTIN

    provider, _, name = model_id.partition(":")
    if not provider or not name:
        raise SpecError(f"{source} {model_id!r} must look like 'provider:name'")
    if provider == "llamacpp":
        if name in BUILTIN or Path(name).expanduser().is_file():
            return
        shipped = ", ".join(f"llamacpp:{b}" for b in sorted(BUILTIN))
        raise SpecError(
            f"{source} {model_id!r}: {name!r} is neither a model loopsim ships ({shipped}) "
            "nor an existing .gguf file"
        )
    known = langchain_providers()
    if provider not in known:
        common = [p for p in ("openai", "anthropic", "ollama") if p in known]
        raise SpecError(
            f"{source} {model_id!r}: unknown provider {provider!r}; use llamacpp, "
            f"{', '.join(common)} or another of langchain's {len(known)} providers"
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
            from loopsim.chat.llamacpp import NO_SYSTEM_ROLE, LlamaCppChat, resolve_gguf

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
            # A local model has no endpoint to fail transiently: no retries. Its chat
            # format's folding of system text is the handle's, so the calls record it.
            folds = model.chat_format in NO_SYSTEM_ROLE
            return ChatHandle(
                model_id, model, structured="llamacpp", version=model.version, fold_system=folds
            )
        return _init_langchain(model_id, provider, spec, max_tokens, settings)

    return factory


def _init_langchain(
    model_id: str, provider: str, spec: ModelSpec, max_tokens: int, settings: Settings
) -> ChatHandle:
    base_url = spec.base_url or settings.model_base_url
    model = _compatible(model_id, provider, spec, max_tokens, settings, base_url)
    if model is None:
        model = _langchain_model(model_id, provider, spec, max_tokens, settings, base_url)
    structured = "none"
    if provider == "openai":
        form = spec.response_format or settings.response_format
        structured = {"json_schema": "openai", "json_object": "openai-json-object"}.get(
            form, "none"
        )
    policy = RetryPolicy(
        attempts=settings.model_retries + 1,
        initial=settings.retry_initial_seconds,
        max_wait=settings.retry_max_seconds,
    )
    secrets = [settings.api_key.get_secret_value()] if settings.api_key is not None else []
    return ChatHandle(
        model_id,
        model,
        structured=structured,
        version=model_id,
        retry=policy,
        secrets=secrets,
        base_url=base_url,
        send_seed=provider == "openai",
        fold_system=(spec.system_messages or settings.system_messages) == "fold",
    )


def _compatible(
    model_id: str,
    provider: str,
    spec: ModelSpec,
    max_tokens: int,
    settings: Settings,
    base_url: str | None,
) -> BaseChatModel | None:
    """The light client for an ``openai:`` model on a compatible server (a base URL), or
    None where langchain-openai serves it: no base URL (OpenAI's own API), the setting
    says so, or the spec's params configure langchain-openai's client."""
    from loopsim.chat.compat import CLIENT_PARAMS, OpenAICompatible

    if provider != "openai" or not base_url or settings.openai_client != "light":
        return None
    params: dict[str, Any] = dict(spec.params)
    if CLIENT_PARAMS & params.keys():
        return None
    key = settings.api_key.get_secret_value() if settings.api_key is not None else "not-needed"
    temperature = params.pop("temperature", spec.temperature)
    cap = params.pop("max_completion_tokens", params.pop("max_tokens", max_tokens))
    return OpenAICompatible(
        model_name=model_id.partition(":")[2],
        base_url=base_url,
        api_key=SecretStr(key),
        temperature=float(temperature),
        max_tokens=int(cap),
        timeout=settings.model_timeout,
        extra_body=params,
    )


def _langchain_model(
    model_id: str,
    provider: str,
    spec: ModelSpec,
    max_tokens: int,
    settings: Settings,
    base_url: str | None,
) -> BaseChatModel:
    from langchain.chat_models import init_chat_model

    kwargs: dict[str, Any] = {
        "temperature": spec.temperature,
        "max_tokens": max_tokens,
        "timeout": settings.model_timeout,
        # loopsim retries (tenacity, below); the provider SDK's own retries would multiply.
        "max_retries": 0,
    }
    kwargs.update(spec.params)
    if base_url:
        kwargs["base_url"] = base_url
    if settings.api_key is not None:
        kwargs["api_key"] = settings.api_key.get_secret_value()
    elif base_url and provider == "openai":
        # Local OpenAI-compatible servers want some key, and never check it.
        kwargs["api_key"] = "not-needed"
    if base_url and provider == "openai" and "extra_body" not in kwargs:
        # langchain-openai sends the cap as max_completion_tokens, which some compatible
        # servers (llama-cpp-python's among them) ignore: send the older name as well.
        kwargs["extra_body"] = {"max_tokens": max_tokens}
    try:
        model: BaseChatModel = init_chat_model(model_id, **kwargs)
    except ImportError as exc:
        raise ModelUnavailable(
            f"provider {provider!r} needs its langchain package ({exc.name or exc}); "
            f"pip install langchain-{provider}"
        ) from None
    except Exception as exc:  # the model seam
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailable(f"cannot build model {model_id}: {first}"[:500]) from None
    return model
