"""A light chat model for OpenAI-compatible servers (vLLM, llama.cpp's server, Ollama's
``/v1``): one ``POST /chat/completions`` per call over a shared httpx connection pool.

langchain-openai builds each request and parses each reply through the openai SDK's
typed models, which cost more CPU per call than loopsim's whole day at high concurrency
(``benchmarks/README.md``, "The service: throughput"). This model sends the same JSON
body (messages, temperature, the output cap under both its names, seed,
``response_format`` and the spec's ``[model] params``) and reads only what loopsim keeps
from the reply: the text, token usage, the served model's name and its fingerprint.

It is still a langchain-core ``BaseChatModel``: callbacks, tracers and ``ainvoke`` work as
for any other model. A reply that is not a usable completion raises
:class:`EndpointError`, which carries the status, the response and the parsed body the
way the openai SDK's errors do, so :mod:`loopsim.chat.faults` decides retries, reads
``Retry-After`` and recognises a refused ``response_format`` the same way for both.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr, SecretStr

from loopsim.chat import transport
from loopsim.text import excerpt

# Connection pools per event loop (see OpenAICompatible.aclient).
SHARDS = 16

# Message types as the chat-completions API names their roles.
ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}

# ``[model] params`` that configure langchain-openai's client rather than the request:
# a spec that sets one is served by langchain-openai, which knows what they mean.
CLIENT_PARAMS = frozenset(
    {
        "base_url",
        "openai_api_base",
        "organization",
        "openai_organization",
        "openai_proxy",
        "timeout",
        "request_timeout",
        "max_retries",
        "streaming",
        "stream_usage",
        "use_responses_api",
        "output_version",
        "include_response_headers",
        "disabled_params",
        "default_headers",
        "default_query",
        "tiktoken_model_name",
        "model_name",
        "model",
    }
)


class EndpointError(Exception):
    """A reply that is no usable completion: an HTTP error, or a success whose body is not
    a chat completion. ``status_code``, ``response`` and ``body`` as the openai SDK's."""

    def __init__(self, message: str, *, response: httpx.Response, body: Any) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.body = body


def message_json(message: BaseMessage) -> dict[str, Any]:
    content = message.content
    return {
        "role": ROLES.get(message.type, message.type),
        "content": content if isinstance(content, str) else message.text,
    }


def parse_completion(response: httpx.Response) -> ChatResult:
    """The reply's text, usage and model, or :class:`EndpointError`. A body cut short or
    garbled raises ``json.JSONDecodeError`` (transient, as the SDK's equivalent is)."""
    status = response.status_code
    if status >= 300:
        try:
            body: Any = json.loads(response.content)
        except ValueError:
            body = response.text[:2000]
        error = body.get("error", body) if isinstance(body, dict) else body
        said = error.get("message") if isinstance(error, dict) else None
        said = said if isinstance(said, str) and said.strip() else error
        # A server's JSON message is quoted whole; a body that is not JSON (a proxy's
        # HTML error page, say) only as a short excerpt, so the error stays readable.
        if isinstance(body, str):
            said = excerpt(body)
        code = f"Error code: {status}"
        raise EndpointError(
            f"{code} - {said}" if said != "" else code, response=response, body=body
        )
    data = json.loads(response.content)
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise EndpointError(
            f"the reply is not a chat completion: {excerpt(response.text)}",
            response=response,
            body=data,
        ) from None
    if not isinstance(text, str):
        raise EndpointError("the reply's content is not text", response=response, body=data)
    usage = data.get("usage") if isinstance(data, dict) else None
    usage_metadata: Any = None
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        tokens_in = int(usage["prompt_tokens"])
        tokens_out = int(usage.get("completion_tokens") or 0)
        usage_metadata = {
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "total_tokens": int(usage.get("total_tokens") or tokens_in + tokens_out),
        }
    metadata = {
        "model_name": data.get("model"),
        "system_fingerprint": data.get("system_fingerprint"),
        "finish_reason": choice.get("finish_reason"),
    }
    message = AIMessage(
        content=text,
        usage_metadata=usage_metadata,
        response_metadata={k: v for k, v in metadata.items() if v is not None},
    )
    return ChatResult(
        generations=[ChatGeneration(message=message)],
        llm_output={"token_usage": usage, "model_name": data.get("model")},
    )


class OpenAICompatible(BaseChatModel):
    """``POST {base_url}/chat/completions``, synchronously or on the event loop.

    One httpx client per model (and one per event loop for ``ainvoke``), kept open: its
    connections are reused across calls and runs, with no cap of its own on their number
    (``loopsim serve`` bounds the calls in flight by its concurrency)."""

    model_name: str
    base_url: str
    api_key: SecretStr | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float = 300.0
    # Sent in every request body: the spec's [model] params.
    extra_body: dict[str, Any] = Field(default_factory=dict)

    _client: httpx.Client | None = PrivateAttr(default=None)
    _aclients: dict[int, tuple[asyncio.AbstractEventLoop, list[httpx.AsyncClient]]] = PrivateAttr(
        default_factory=dict
    )
    _tls: ssl.SSLContext | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.get_secret_value()}"
        return headers

    def _tls_context(self) -> ssl.SSLContext | None:
        """Certificates for an https server, loaded once (it is slow); None for plain HTTP,
        which needs none."""
        if self._tls is None and self.base_url.startswith("https:"):
            self._tls = httpx.create_ssl_context()
        return self._tls

    def _options(self) -> dict[str, Any]:
        tls = self._tls_context()
        return {
            "timeout": httpx.Timeout(self.timeout),
            "limits": httpx.Limits(max_connections=None, max_keepalive_connections=None),
            "headers": self._headers(),
            # Plain HTTP needs no certificates: no context that loads them for nothing.
            "verify": tls if tls is not None else False,
        }

    def body(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> bytes:
        """The request body, as langchain-openai would send it to a compatible server."""
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": [message_json(m) for m in messages],
            "stream": False,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            # Newer servers read max_completion_tokens, older ones (llama-cpp-python's
            # among them) only max_tokens: both, as the langchain-openai path sends.
            body["max_completion_tokens"] = self.max_tokens
            body["max_tokens"] = self.max_tokens
        if stop:
            body["stop"] = stop
        body.update(self.extra_body)
        body.update(kwargs)
        return json.dumps(body).encode()

    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(**self._options())
            return self._client

    def aclient(self) -> httpx.AsyncClient:
        """The calling task's client on this event loop.

        An async client's connections belong to the loop that opened them, and a process
        may run several loops one after the other: each loop has its own clients. And
        httpcore looks over every connection of its pool for each request (for one that
        expired or that the server closed, a system call each), which costs O(C) per call
        with C calls in flight: the loop's connections are split over :data:`SHARDS`
        pools, a task keeping to one, so each pool holds about C / SHARDS of them."""
        loop = asyncio.get_running_loop()
        held = self._aclients.get(id(loop))
        if held is None or held[0] is not loop:
            # Loops gone since: their clients' connections died with them.
            for key, (old, _) in list(self._aclients.items()):
                if old.is_closed():
                    del self._aclients[key]
            options = self._options()
            held = (loop, [httpx.AsyncClient(**options) for _ in range(SHARDS)])
            self._aclients[id(loop)] = held
        task = asyncio.current_task()
        return held[1][hash(task) % SHARDS]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        content = self.body(messages, stop, kwargs)
        with self.client().stream("POST", self.url, content=content) as response:
            read = transport.whole(response, response.iter_raw(), self.url)
        return parse_completion(read)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        content = self.body(messages, stop, kwargs)
        sessions = transport.current()
        if sessions is not None:  # inside `loopsim serve`: aiohttp (chat/transport.py)
            response = await sessions.post(
                self.url,
                content,
                headers=self._headers(),
                timeout=self.timeout,
                tls=self._tls_context(),
            )
        else:
            async with self.aclient().stream("POST", self.url, content=content) as streamed:
                response = await transport.awhole(streamed, streamed.aiter_raw(), self.url)
        return parse_completion(response)
