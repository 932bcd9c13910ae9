"""loopsim's light client for OpenAI-compatible servers (loopsim/chat/compat.py), against
the stub server on 127.0.0.1: what it sends beside langchain-openai, when it is used, and
its asynchronous path's faults. tests/test_faults.py and tests/test_chat.py run every
fault and reply test against both clients; only the network peer is fake."""

from __future__ import annotations

import asyncio
import gc
import socket
import warnings
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.tracers.context import collect_runs

from loopsim.chat import transport
from loopsim.chat.compat import OpenAICompatible
from loopsim.chat.handle import build_chat
from loopsim.chat.tracing import Trace, traced
from loopsim.config import Settings
from loopsim.errors import ModelUnavailable
from loopsim.loop import Loop
from loopsim.schemas import DayStatus, ModelSpec
from loopsim.testing.stubserver import StubOpenAI
from tests.conftest import make_run

MODEL = "openai:stub-model"
KEY = "sk-compat-test-4b1d9e2f7a"
T = TypeVar("T")


def settings_for(url: str, client: str = "light", **kw) -> Settings:
    base = {
        "model_base_url": url,
        "openai_client": client,
        "model_timeout": 1.0,
        "model_retries": 8,
        "retry_initial_seconds": 0.01,
        "retry_max_seconds": 5.0,
    }
    return Settings(**{**base, **kw})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_light_client_serves_compatible_servers_and_langchain_the_rest():
    url = "http://127.0.0.1:9/v1"
    light = build_chat(settings_for(url))(MODEL, ModelSpec(), 100)
    assert isinstance(light.model, OpenAICompatible)
    chosen = build_chat(settings_for(url, client="langchain"))(MODEL, ModelSpec(), 100)
    assert type(chosen.model).__name__ == "ChatOpenAI"
    # OpenAI's own API (no base URL) keeps langchain-openai.
    hosted = build_chat(Settings(api_key="sk-x" * 4))(MODEL, ModelSpec(), 100)
    assert type(hosted.model).__name__ == "ChatOpenAI"
    # A param that configures langchain-openai's client, not the request.
    client_param = ModelSpec(params={"max_retries": 3})
    assert type(build_chat(settings_for(url))(MODEL, client_param, 100).model).__name__ == (
        "ChatOpenAI"
    )


def test_the_light_client_sends_what_langchain_openai_sends(database, spec):
    """One day with each client: the same messages, model, cap, temperature, seed and
    response_format, and the spec's params in the body."""
    spec = spec.model_copy(
        update={"model": spec.model.model_copy(update={"params": {"top_p": 0.5}})}
    )
    bodies = {}
    for client in ("light", "langchain"):
        with StubOpenAI() as stub:
            settings = settings_for(stub.base_url, client, api_key=KEY)
            run_id = make_run(database, spec, model=MODEL)
            (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
            assert result.status == DayStatus.COMMITTED, result.error
            (bodies[client],) = stub.requests
    light, langchain = bodies["light"], bodies["langchain"]
    for key in ("model", "messages", "temperature", "response_format", "top_p"):
        assert light[key] == langchain[key], key
    assert light["max_tokens"] == light["max_completion_tokens"] == 400
    assert langchain.get("max_completion_tokens", langchain.get("max_tokens")) == 400
    assert isinstance(light["seed"], int)
    assert isinstance(langchain["seed"], int)
    assert set(light) - set(langchain) <= {"max_tokens", "max_completion_tokens", "stream"}


def on_event_loop(make: Callable[[], Awaitable[T]], path: str) -> T:
    """Await ``make()`` on a fresh event loop: through httpx, or inside the aiohttp scope
    ``loopsim serve`` opens (loopsim/chat/transport.py)."""

    async def main() -> T:
        if path == "httpx":
            return await make()
        async with transport.scope() as sessions:
            assert sessions is not None, "aiohttp is a dependency of loopsim"
            return await make()

    return asyncio.run(main())


@pytest.mark.parametrize("path", ["httpx", "aiohttp"])
def test_async_faults_are_retried_and_the_reply_read(path):
    """The event-loop path (``loopsim serve``) rides out every transient fault, and reads
    the text, token usage and served model's name with its fingerprint."""
    faults = ["429", "500", "503", "truncate", "invalid_json", "reset", "stall", "stall_body"]
    with StubOpenAI(faults=faults, retry_after=0.05, stall_seconds=3) as stub:
        handle = build_chat(settings_for(stub.base_url, model_retries=len(faults)))(
            MODEL, ModelSpec(), 100
        )
        retried: list[str] = []
        handle.on_retry = lambda exc, wait: retried.append(type(exc).__name__)
        messages = [SystemMessage("Be brief."), HumanMessage("Hello.")]
        reply = on_event_loop(lambda: handle.acomplete(messages, None, seed=7), path)
    assert all(path in agent for agent in stub.user_agents()), stub.user_agents()
    assert stub.served == {**dict.fromkeys(faults, 1), "ok": 1}
    assert len(retried) == len(faults)
    assert reply.requests == len(faults) + 1
    assert reply.text.startswith("From what the log records")
    assert reply.tokens_in is not None
    assert reply.tokens_in > 0
    assert reply.model_version == "stub-model (stub)"
    assert stub.requests[-1]["seed"] == 7


@pytest.mark.parametrize("path", ["httpx", "aiohttp"])
def test_async_refused_connection_says_where_nothing_answers(path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    handle = build_chat(settings_for(url, model_retries=1))(MODEL, ModelSpec(), 100)
    with pytest.raises(ModelUnavailable) as raised:
        on_event_loop(lambda: handle.acomplete([HumanMessage("Hello.")], None), path)
    assert f"nothing answers at {url} (connection refused)" in raised.value.message
    assert "after 2 attempts" in raised.value.message


def test_one_handle_serves_event_loops_one_after_another():
    """An async client's connections belong to its event loop: a second loop must not
    reuse the first one's (``Event loop is closed``)."""
    with StubOpenAI() as stub:
        handle = build_chat(settings_for(stub.base_url, model_retries=0))(MODEL, ModelSpec(), 100)
        for _ in range(3):
            reply = asyncio.run(handle.acomplete([HumanMessage("Hello.")], None))
            assert reply.text
        assert handle.complete([HumanMessage("Hello.")], None).text
    assert stub.served == {"ok": 4}


def test_the_aiohttp_scope_closes_its_connections_when_it_ends(caplog):
    """An aiohttp session left open says "Unclosed client session" on stderr when it is
    collected: the scope ``loopsim serve`` opens closes every one it opened, and a call
    after it goes through httpx again."""
    with StubOpenAI() as stub:
        handle = build_chat(settings_for(stub.base_url, model_retries=0))(MODEL, ModelSpec(), 100)

        async def main() -> transport.Sessions:
            async with transport.scope() as sessions:
                assert sessions is not None
                await asyncio.gather(
                    *(handle.acomplete([HumanMessage(f"Hello {i}.")], None) for i in range(4))
                )
            with pytest.raises(httpx.ConnectError, match="closed its connections"):
                await sessions.post(handle.model.url, b"{}", headers={}, timeout=1.0)
            await handle.acomplete([HumanMessage("After.")], None)
            return sessions

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sessions = asyncio.run(main())
            del sessions
            gc.collect()
    agents = stub.user_agents()
    assert len(agents) == 5
    assert all("aiohttp" in agent for agent in agents[:4]), agents
    assert "httpx" in agents[4]
    # aiohttp's words for a session or connector collected open.
    said = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert [m for m in said if "Unclosed client session" in m or "Unclosed connector" in m] == []


def test_a_call_is_traced_under_its_day_without_the_key():
    with StubOpenAI(faults=["400"]) as stub:
        handle = build_chat(settings_for(stub.base_url, api_key=KEY))(MODEL, ModelSpec(), 100)
        with pytest.raises(ModelUnavailable) as raised:
            handle.complete([HumanMessage("Hello.")], None)
        assert "HTTP 400" in raised.value.message
        trace = Trace("t day 1", inputs={}, metadata={}, tags=[])

        def conversation():
            return (yield "call")

        with collect_runs() as collector:
            calls = traced(conversation(), trace)
            next(calls)
            reply = handle.complete([HumanMessage("Hello.")], None)
            with pytest.raises(StopIteration):
                calls.send(reply)
    (root,) = collector.traced_runs
    (child,) = root.child_runs
    assert child.run_type == "llm"
    assert child.outputs is not None
    assert KEY not in repr(root.model_dump())
    assert reply.text


# A web server's error page in front of the model, as nginx writes one, padded past a
# thousand characters with what a browser never shows.
ERROR_PAGE = (
    "<!DOCTYPE html>\n<html>\n<head><title>500 Internal Server Error</title>\n"
    "<style>\n  body { font-family: sans-serif; margin: 4em; }\n</style></head>\n<body>\n"
    "<center><h1>500 Internal Server Error</h1></center>\n"
    + "<!-- a padding comment to make the page longer, as error pages are -->\n" * 14
    + "<hr><center>nginx/1.25.3 &amp; friends</center>\n</body>\n</html>\n"
)


class _Replies:
    """A server on 127.0.0.1 whose every reply is ``kind``: "endless" (a 200 whose body
    never ends), "gzip" (a whole completion, compressed) or "html" (a 500 whose body is
    :data:`ERROR_PAGE`)."""

    def __init__(self, kind: str) -> None:
        import gzip
        import http.server
        import json
        import threading

        completion = json.dumps(
            {
                "model": "stub-model",
                "choices": [{"message": {"role": "assistant", "content": "Compressed."}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        ).encode()
        self.sent = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(handler) -> None:
                handler.rfile.read(int(handler.headers["Content-Length"]))
                if kind == "html":
                    page = ERROR_PAGE.encode()
                    handler.send_response(500)
                    handler.send_header("Content-Type", "text/html")
                    handler.send_header("Content-Length", str(len(page)))
                    handler.end_headers()
                    handler.wfile.write(page)
                    return
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                if kind == "gzip":
                    body = gzip.compress(completion)
                    handler.send_header("Content-Encoding", "gzip")
                    handler.send_header("Content-Length", str(len(body)))
                    handler.end_headers()
                    handler.wfile.write(body)
                    return
                handler.send_header("Transfer-Encoding", "chunked")
                handler.end_headers()
                chunk = b"x" * 65536
                try:
                    while self.sent < 64 * transport.REPLY_LIMIT:  # stops at a hang-up
                        handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.sent += len(chunk)
                except OSError:
                    handler.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> _Replies:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def failed_call(base_url: str, path: str) -> ModelUnavailable:
    """The error of one call without retries to ``base_url``, made on ``path`` (the
    sync client, or the async one over httpx or aiohttp); fails if the call succeeds."""
    handle = build_chat(settings_for(base_url, model_retries=0))(MODEL, ModelSpec(), 100)
    messages = [HumanMessage("Hello.")]

    def call() -> object:
        if path == "sync":
            return handle.complete(messages, None)
        return on_event_loop(lambda: handle.acomplete(messages, None), path)

    with pytest.raises(ModelUnavailable) as raised:
        call()
    return raised.value


@pytest.mark.parametrize("path", ["sync", "httpx", "aiohttp"])
def test_a_reply_that_never_ends_is_read_only_up_to_the_limit(path):
    """A server streaming a body without end was read whole: 3.9 GB of memory before a
    MemoryError, and in `loopsim serve` the kernel's OOM killer takes every run down."""
    with _Replies("endless") as server:
        failure = failed_call(server.base_url, path)
    assert f"reply longer than {transport.REPLY_LIMIT:,} bytes" in failure.message
    assert server.sent < 4 * transport.REPLY_LIMIT  # the reader hung up soon after


@pytest.mark.parametrize("path", ["sync", "httpx", "aiohttp"])
def test_a_compressed_reply_is_read_on_every_path(path):
    """Replies are read raw (to cap them) and decoded once, as their headers say."""
    with _Replies("gzip") as server:
        handle = build_chat(settings_for(server.base_url))(MODEL, ModelSpec(), 100)
        messages = [HumanMessage("Hello.")]
        if path == "sync":
            reply = handle.complete(messages, None)
        else:
            reply = on_event_loop(lambda: handle.acomplete(messages, None), path)
    assert reply.text == "Compressed."
    assert reply.tokens_in == 3


@pytest.mark.parametrize("path", ["sync", "httpx", "aiohttp"])
def test_an_html_error_page_is_quoted_as_a_short_line_of_its_words(path):
    """A 500 whose body was a web server's HTML page filled the one-line error with its
    markup, cut off mid-comment by the message's own limit."""
    assert len(ERROR_PAGE) > 1000
    with _Replies("html") as server:
        failure = failed_call(server.base_url, path)
    assert failure.message == (
        f"model {MODEL} failed: HTTP 500: Error code: 500 - 500 Internal Server Error "
        "500 Internal Server Error nginx/1.25.3 & friends"
    )
