"""An OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` after a set latency, with a valid DayReport when
the request asks for JSON and plain sentences otherwise, and it can inject the faults real
endpoints produce: 429 with Retry-After, 5xx, stalls, truncated or garbled bodies and
reset connections. It is the network peer only; loopsim talks to it through the real
langchain-openai client. ``python -m loopsim.testing.stubserver`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from loopsim.testing import DIGEST_ASKED, report_json

FAULTS = ("429", "400", "500", "502", "503", "stall", "stall_body", "truncate", "invalid_json")
# Not a transient fault but a server's habit: "llama_json_schema" answers a request for
# response_format json_schema as llama-cpp-python's server does (HTTP 500, a validation
# error), and any other request normally.
FAULTS_ALL = (*FAULTS, "reset", "llama_json_schema")
# The body llama-cpp-python's server (python -m llama_cpp.server) answers json_schema with.
LLAMA_JSON_SCHEMA_ERROR = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
        "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
        "'input': 'json_schema', 'ctx': {'expected': \"'text' or 'json_object'\"}}\n",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


def _asks_digest(messages: list[dict[str, Any]]) -> bool:
    return any(DIGEST_ASKED in str(m.get("content") or "") for m in messages)


def default_text(body: dict[str, Any]) -> str:
    """A valid DayReport if JSON was asked for (a digest if a digest was), else a short
    plain answer."""
    messages = body.get("messages") or [{}]
    last = str(messages[-1].get("content") or "")
    if "response_format" not in body:
        return (
            "From what the log records, the answer depends on the measurements still to be "
            "made. I would start with the simplest test that could prove me wrong."
        )
    if _asks_digest(messages):
        heading = last.split("# Entries: ", 1)[-1].split("\n", 1)[0]
        return json.dumps({"digest": f"Digest of {heading}: what was measured, and what next."})
    date = last.rsplit("Today's date is ", 1)[-1][:10] if "Today's date is " in last else "today"
    return report_json(
        ("note", f"Observations for {date}", f"On {date} I read the log and noted what to try."),
        ("question", "What to measure first", "Which measurement separates the explanations?"),
    )


def conditioned_text(body: dict[str, Any]) -> str:
    """Like :func:`default_text`, but a day's words depend on the whole conversation, as a
    real model's do: two forks under different conditionals write different days, and
    equal prompts still get equal replies (``--conditioned``)."""
    if "response_format" not in body or _asks_digest(body.get("messages") or []):
        return default_text(body)
    text = "".join(str(m.get("content") or "") for m in body.get("messages") or [])
    digest = hashlib.sha256(text.encode()).hexdigest()
    words = " ".join(f"idea{digest[i : i + 2]}" for i in range(0, 12, 2))
    return report_json(
        ("note", f"Notes on {words[:14]}", f"From the log I noted {words} today."),
        ("question", "What to measure first", "Which measurement separates the explanations?"),
    )


class StubOpenAI:
    """The server, run on its own event loop in a daemon thread."""

    def __init__(
        self,
        *,
        reply: Callable[[dict[str, Any]], str] | None = None,
        latency: float = 0.0,
        faults: Sequence[str] = (),
        fault_fn: Callable[[int, dict[str, Any]], str | None] | None = None,
        retry_after: float = 1.0,
        stall_seconds: float = 30.0,
        key_fn: Callable[[dict[str, Any]], str] | None = None,
        port: int = 0,
    ) -> None:
        unknown = [f for f in faults if f not in FAULTS_ALL and f != "ok"]
        if unknown:
            raise ValueError(f"unknown faults: {unknown}")
        self.reply = reply or default_text
        self.latency = latency
        self.fault_fn = fault_fn
        self.retry_after = retry_after
        self.stall_seconds = stall_seconds
        self.key_fn = key_fn
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request, in order
        self.served: Counter[str] = Counter()
        self.heads: list[bytes] = []  # each request's line and headers, as received
        self.max_in_flight = 0
        self.max_in_flight_per_key: dict[str, int] = {}
        self._faults = list(faults)
        self._in_flight = 0
        self._per_key: dict[str, int] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.base_url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=4096)
            )
            port = self._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}/v1"
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="stub-openai", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.base_url

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> StubOpenAI:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving

    def user_agents(self) -> list[str]:
        """The User-Agent of each request, in order: which client library sent it."""
        agents = []
        for head in self.heads:
            found = re.search(rb"(?im)^user-agent:[ \t]*(.*?)\r?$", head)
            agents.append(found.group(1).decode("latin-1") if found else "")
        return agents

    def in_flight(self, key: str = "") -> int:
        """Requests with this ``key_fn`` key being answered right now."""
        with self._lock:
            return self._per_key.get(key, 0)

    def _next_fault(self, number: int, body: dict[str, Any]) -> str:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
        if self.fault_fn is not None:
            return self.fault_fn(number, body) or "ok"
        return "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, body, head = request
                self.heads.append(head)
                if not await self._respond(method, path, body, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _respond(
        self, method: str, path: str, raw: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False closes the connection."""
        if method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": "stub-model", "object": "model"}]}
            await _send(writer, 200, json.dumps(data).encode())
            return True
        if method != "POST" or not path.endswith("/chat/completions"):
            await _send(writer, 404, b'{"error": {"message": "not found"}}')
            return True
        body = json.loads(raw or b"{}")
        key = self.key_fn(body) if self.key_fn else ""
        with self._lock:
            number = len(self.requests)
            self.requests.append(body)
            self.arrivals.append(time.monotonic())
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._per_key[key] = self._per_key.get(key, 0) + 1
            self.max_in_flight_per_key[key] = max(
                self.max_in_flight_per_key.get(key, 0), self._per_key[key]
            )
        try:
            fault = self._next_fault(number, body)
            with self._lock:
                self.served[fault] += 1
            return await self._answer(fault, body, writer)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._per_key[key] -= 1

    async def _answer(self, fault: str, body: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        if fault == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:  # RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            return False
        if fault in ("429", "400", "500", "502", "503"):
            error = {"error": {"message": f"stub fault {fault}", "type": "stub", "code": fault}}
            headers = {"Retry-After": f"{self.retry_after:g}"} if fault == "429" else {}
            await _send(writer, int(fault), json.dumps(error).encode(), headers)
            return True
        if fault == "llama_json_schema":
            asked = body.get("response_format")
            if isinstance(asked, dict) and asked.get("type") == "json_schema":
                await _send(writer, 500, json.dumps(LLAMA_JSON_SCHEMA_ERROR).encode())
                return True
        if fault == "invalid_json":
            await _send(writer, 200, b'{"id": "x", "choices": [')
            return True
        await asyncio.sleep(self.latency)
        payload = self._completion(body)
        if fault == "truncate":
            await _send(writer, 200, payload, cut=len(payload) // 3)
            return False
        if fault == "stall_body":
            await _send(writer, 200, payload, cut=len(payload) // 2)
            await asyncio.sleep(self.stall_seconds)
            return False
        await _send(writer, 200, payload)
        return True

    def _completion(self, body: dict[str, Any]) -> bytes:
        text = self.reply(body)
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        usage = {
            "prompt_tokens": max(1, prompt_chars // 4),
            "completion_tokens": max(1, len(text) // 4),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return json.dumps(
            {
                "id": f"chatcmpl-stub-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "stub-model"),
                "system_fingerprint": "stub",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        ).encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes, bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length) if length else b""
    return method, path, body, head


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    cut: int | None = None,
) -> None:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}
    lines = [
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body[:cut])
    await writer.drain()


@contextlib.contextmanager
def spawned(latency: float = 0.0) -> Iterator[str]:
    """A stub in a process of its own (:func:`main`), for as long as the block runs; its
    base URL. Benchmarks use it so the stub's CPU is not counted as the measured one's."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopsim.testing.stubserver", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stub server for tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--faults", default="", help="comma-separated faults, served first")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--conditioned",
        action="store_true",
        help="day replies whose words depend on the whole prompt (for run compare)",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)

    def fault_fn(number: int, body: dict[str, Any]) -> str | None:
        if args.fault_rate and rng.random() < args.fault_rate:
            return rng.choice(("429", "500", "503", "reset"))
        return None

    faults = [f for f in args.faults.split(",") if f]
    stub = StubOpenAI(
        reply=conditioned_text if args.conditioned else None,
        latency=args.latency,
        faults=faults,
        fault_fn=fault_fn,
        retry_after=0.2,
        port=args.port,
    )
    print(stub.start(), flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    stub.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
