"""Hosted and OpenAI-compatible models through both real clients (loopsim's light one and
langchain-openai), against an OpenAI-shaped server on 127.0.0.1. Only the network peer is
fake."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from langchain_core.messages import HumanMessage
from sqlalchemy import text

from loopsim.chat.handle import ChatHandle, build_chat
from loopsim.config import Settings
from loopsim.errors import ModelUnavailable
from loopsim.loop import Loop
from loopsim.record.store import Store
from loopsim.schemas import DayStatus, ModelSpec
from loopsim.testing import ScriptedChatModel, report_json
from tests.conftest import Cli, make_run

REPLY = report_json(("note", "From the server", "A reply that came over real HTTP today."))
SECRET = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True, params=["light", "langchain"])
def client(request, monkeypatch) -> str:
    """Every test here runs against both clients of OpenAI-compatible servers: loopsim's
    light one and langchain-openai (LOOPSIM_OPENAI_CLIENT, read by every Settings)."""
    monkeypatch.setenv("LOOPSIM_OPENAI_CLIENT", request.param)
    return str(request.param)


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    headers_seen: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append(body)
        FakeOpenAI.headers_seen.append({"authorization": self.headers.get("Authorization", "")})
        payload = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "served-model-7b",
            "system_fingerprint": "fp_local",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": REPLY},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 321, "completion_tokens": 45, "total_tokens": 366},
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    FakeOpenAI.requests, FakeOpenAI.headers_seen = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_a_day_against_an_openai_compatible_server(database, spec, server):
    settings = Settings(model_base_url=server, api_key=SECRET)
    run_id = make_run(database, spec, model="openai:served-model-7b")
    (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED
    (request,) = FakeOpenAI.requests
    assert request["model"] == "served-model-7b"
    assert request.get("max_completion_tokens", request.get("max_tokens")) == 400
    assert request["response_format"]["type"] == "json_schema"
    assert "entries" in request["response_format"]["json_schema"]["schema"]["properties"]
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    assert FakeOpenAI.headers_seen[0]["authorization"] == f"Bearer {SECRET}"
    with database.read() as session:
        row = session.execute(text("SELECT model_version, tokens_in, tokens_out FROM days")).one()
        assert row == ("served-model-7b (fp_local)", 321, 45)
        for table in ("runs", "days", "entries"):
            dump = json.dumps(
                [list(r) for r in session.execute(text(f"SELECT * FROM {table}"))], default=str
            )
            assert SECRET not in dump


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_dead_endpoint_fails_the_day_with_its_reason_and_then_the_run(database, spec):
    settings = Settings(
        model_base_url=f"http://127.0.0.1:{free_port()}/v1",
        model_timeout=5,
        model_retries=2,
        retry_initial_seconds=0.01,
        max_failed_days=2,
    )
    run_id = make_run(database, spec, model="openai:nothing-here")
    loop = Loop(database, settings, build_chat(settings))
    (first,) = loop.run_days(run_id, 3)  # stops at the first failed day
    assert first.status == DayStatus.FAILED
    assert not first.run_failed
    # One line that says where nothing answered, and what would fix it.
    assert first.error == (
        f"model openai:nothing-here failed after 3 attempts: nothing answers at "
        f"{settings.model_base_url} (connection refused); start the server there, or point "
        "LOOPSIM_MODEL_BASE_URL (or the spec's [model] base_url) at one that runs"
    )
    (second,) = loop.run_days(run_id, 3)
    assert second.run_failed
    with database.read() as session:
        rows = session.execute(text("SELECT status, error FROM days ORDER BY 1")).all()
        assert [r[0] for r in rows] == ["failed", "failed"]
        assert session.execute(text("SELECT count(*) FROM entries")).scalar() == 0
        status, reason = session.execute(text("SELECT status, status_reason FROM runs")).one()
    assert status == "failed"
    assert reason.startswith("2 failed days in a row; day 1: model")


def test_a_dead_endpoint_records_its_attempts_and_time_and_run_show_sums_them(
    database, spec, sqlite_url
):
    """Issue 18 item 7, issue 19 item 5: a failed day stored 0 attempts and 0.0 s."""
    settings = Settings(
        model_base_url=f"http://127.0.0.1:{free_port()}/v1",
        model_retries=2,
        retry_initial_seconds=0.2,
    )
    run_id = make_run(database, spec, model="openai:nothing-here")
    began = time.perf_counter()
    (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    wall_ms = (time.perf_counter() - began) * 1000
    assert result.status == DayStatus.FAILED
    with database.read() as session:
        store = Store(session)
        day = store.get_day(run_id, 1)
        ((call_latency, error, accepted),) = [
            (c.latency_ms, c.error, c.accepted) for c in store.day_calls(day.id)
        ]
    # Three requests, and the waits between them (0.1-0.2 s, then 0.2-0.4 s).
    assert day.attempts == 3
    assert 300 <= day.latency_ms <= wall_ms
    assert call_latency == day.latency_ms
    assert not accepted
    assert "after 3 attempts" in error
    show = Cli(sqlite_url)("run", "show", run_id)
    assert f"latency         {day.latency_ms / 1000:.1f} s" in show.stdout
    info = json.loads(Cli(sqlite_url)("run", "show", run_id, "--json").stdout)
    assert (info["latency_ms"], info["tokens_in"]) == (day.latency_ms, 0)


def test_unknown_provider_is_named():
    factory = build_chat(Settings())
    with pytest.raises(ModelUnavailable, match="nosuchprovider"):
        factory("nosuchprovider:model", ModelSpec(), 100)


def _failing_handle(secret: str) -> ChatHandle:
    def refuse(messages: Any) -> str:
        raise ValueError("max_tokens exceeds the context of this model (4096)")

    model = ScriptedChatModel(script=[refuse])
    return ChatHandle("openai:local", model, secrets=[secret])


@pytest.mark.parametrize("short", ["x", "e", "sk-1234"])
def test_a_short_api_key_is_not_blanked_out_of_every_error(short):
    # LOOPSIM_API_KEY=x used to turn every "x" of an error into "***".
    with pytest.raises(ModelUnavailable) as caught:
        _failing_handle(short).complete([HumanMessage("hi")], None)
    assert "max_tokens exceeds the context of this model (4096)" in caught.value.message
    assert "***" not in caught.value.message


def test_a_key_long_enough_to_be_a_secret_is_blanked_out():
    with pytest.raises(ModelUnavailable) as caught:
        _failing_handle("exceeds the context").complete([HumanMessage("hi")], None)
    assert "max_tokens *** of this model" in caught.value.message


def test_run_step_says_each_retry_of_a_dead_endpoint_as_it_happens(database, spec, sqlite_url):
    """Issue 14 item 6: a dead base URL showed nothing but a still progress bar until its
    retries were spent. Each retry now prints a line with the model and the wait."""
    cli = Cli(
        sqlite_url,
        model_base_url=f"http://127.0.0.1:{free_port()}/v1",
        model_retries=2,
        retry_initial_seconds=0.05,
    )
    run_id = make_run(database, spec, model="openai:nothing-here")
    result = cli("run", "step", run_id)
    assert result.exit_code == 1
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == 2
    assert all(line.strip().startswith("model openai:nothing-here: ") for line in retries)
    last = result.stderr.strip().splitlines()[-1]
    # One "failed", not "day 1 failed: model ... failed after 3 attempts".
    assert last.startswith("error: day 1: model openai:nothing-here failed after 3 attempts: ")
    assert last.endswith(f"`loopsim run step {run_id}` tries day 1 again")


def test_the_instant_scripted_model_never_gives_up_the_core(monkeypatch):
    """``time.sleep(0)`` yields the thread: on a loaded machine each instant reply waited
    milliseconds for the core, and the per-day benchmarks timed that wait as loopsim's
    (or LangGraph's) work. A delay still sleeps."""
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    ScriptedChatModel(script=[report_json()]).invoke([HumanMessage("go")])
    assert slept == []
    ScriptedChatModel(script=[report_json()], delay=0.25).invoke([HumanMessage("go")])
    assert slept == [0.25]
