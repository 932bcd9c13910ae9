"""Tracing (issue 16 item 5): with any langchain tracer on, each day is one named trace
with its model calls nested under it, and no secret reaches a trace.

Two real sinks: langchain's own run collector in-process, and a small HTTP server on
127.0.0.1 that speaks enough of LangSmith's ingest API for the real LangSmith client,
which a real `loopsim run step` process sends to with ``LANGSMITH_TRACING=true``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.tracers.context import collect_runs
from pydantic import PrivateAttr

from loopsim.chat.handle import ChatHandle
from loopsim.chat.tracing import Trace, call_config, traced
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.schemas import parse_spec
from loopsim.testing import ScriptedChatModel, default_reply, scripted_factory
from loopsim.testing.stubserver import StubOpenAI
from tests.conftest import SPEC, make_run
from tests.test_calls_cli import babbling_spec, third_report_invalid

API_KEY = "sk-loopsim-test-9f2c4e7a1b8d3c6e5f0a"


def secret_seed(database: Database, run_id: str) -> str:
    with database.read() as session:
        return Store(session).get_run(run_id).secret_seed


def test_each_day_is_one_named_trace_with_its_calls_nested(database, sqlite_url):
    run_id = make_run(database, babbling_spec())
    factory, model = scripted_factory([third_report_invalid()])
    loop = Loop(database, Settings(database_url=sqlite_url), factory)
    with collect_runs() as collector:
        results = loop.run_days(run_id, 3)
    assert len(results) == 3
    roots = collector.traced_runs
    assert [r.name for r in roots] == ["test day 1", "test day 2", "test day 3"]
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        stored = [[c.role for c in store.day_calls(d.id)] for d in days]
    for root, day, roles in zip(roots, days, stored, strict=True):
        assert root.run_type == "chain"
        assert root.parent_run_id is None
        metadata = root.extra["metadata"]
        assert metadata["loopsim_run_id"] == run_id
        assert metadata["loopsim_run_name"] == "test"
        assert metadata["day_index"] == day.index
        assert metadata["external_date"] == day.external_date.isoformat() == "2025-06-02"
        assert {f"run:{run_id}", f"day:{day.index}", "date:2025-06-02"} <= set(root.tags)
        # Every call of the day, retries included, under the day and named by its role.
        assert [c.name for c in root.child_runs] == roles
        assert all(c.run_type == "llm" and c.parent_run_id == root.id for c in root.child_runs)
        assert all(c.trace_id == root.trace_id for c in root.child_runs)
        assert root.outputs is not None
        assert root.outputs["calls"] == len(roles)
    assert stored[2] == ["day", "day", "critic"]  # the retried report is there, twice
    assert len(model.calls) == sum(len(r.child_runs) for r in roots)
    dumped = json.dumps([r.model_dump(mode="json") for r in roots])
    assert secret_seed(database, run_id) not in dumped


def test_no_tracer_no_trace_and_no_config():
    trace = Trace("x day 1", inputs={}, metadata={}, tags=[])
    assert trace.start() is False
    assert trace.child("day") is None

    def conversation() -> Iterator[str]:
        assert call_config() is None
        yield "call"
        return "done"  # type: ignore[misc]

    steps = traced(conversation(), trace)  # type: ignore[arg-type]
    assert next(steps) == "call"
    with pytest.raises(StopIteration):
        steps.send(None)


class LangSmithSink:
    """Enough of LangSmith's API for its Python client: `/info`, and runs posted or
    patched one by one or in batches. Every body is kept raw, to grep for secrets."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.posted: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                with sink.lock:
                    sink.bodies.append(raw)
                return raw

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._reply(200, {"version": "0.0.0-loopsim-sink"} if "/info" in self.path else {})

            def do_POST(self) -> None:
                raw = self._body()
                if self.path.endswith("/runs/multipart"):
                    sink.multipart(self.headers.get("Content-Type", ""), raw)
                elif self.path.endswith("/runs/batch"):
                    batch = json.loads(raw)
                    for run in batch.get("post") or []:
                        sink.post(run)
                    for run in batch.get("patch") or []:
                        sink.post(run)
                elif self.path.endswith("/runs"):
                    sink.post(json.loads(raw))
                self._reply(200, {})

            def do_PATCH(self) -> None:
                run = json.loads(self._body())
                run.setdefault("id", self.path.rstrip("/").rsplit("/", 1)[-1])
                sink.post(run)
                self._reply(200, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def multipart(self, content_type: str, raw: bytes) -> None:
        """The client's usual form: a part per run (``post.ID``, ``patch.ID``), and its
        inputs and outputs in parts of their own (``post.ID.inputs``)."""
        form = BytesParser(policy=default).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
        )
        for part in form.iter_parts():
            _op, run_id, *field = str(part.get_param("name", header="content-disposition")).split(
                ".", 2
            )
            value = json.loads(part.get_payload(decode=True))
            self.post(value if not field else {"id": run_id, field[0]: value})

    def post(self, run: dict[str, Any]) -> None:
        with self.lock:
            self.posted.setdefault(str(run["id"]), {}).update(
                {k: v for k, v in run.items() if v is not None}
            )

    def __enter__(self) -> LangSmithSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_langsmith_gets_one_trace_per_day_with_nested_calls_and_no_secret(database, sqlite_url):
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {"every_days": 2, "spot_check_probability": 0.0, "probes_per_checkin": 1}
    data["probes"] = ["What decides where a colony forages?"]
    run_id = make_run(database, parse_spec(data), model="openai:stub-model")
    with StubOpenAI() as stub, LangSmithSink() as sink:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "LOOPSIM_DATABASE_URL": sqlite_url,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            "LOOPSIM_API_KEY": API_KEY,
            "LANGSMITH_TRACING": "true",
            "LANGSMITH_ENDPOINT": sink.url,
            "LANGSMITH_API_KEY": "lsv2-loopsim-sink-key",
            "LANGSMITH_PROJECT": "loopsim-tests",
        }
        for name in ("LANGCHAIN_TRACING_V2", "LANGCHAIN_ENDPOINT", "LANGCHAIN_API_KEY"):
            env.pop(name, None)
        done = subprocess.run(
            [sys.executable, "-m", "loopsim", "run", "step", run_id, "--days", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 3, done.stderr  # stopped at the check-in after day 2
        runs = dict(sink.posted)
        bodies = b"\n".join(sink.bodies)
    roots = sorted(
        (r for r in runs.values() if not r.get("parent_run_id")), key=lambda r: r["name"]
    )
    assert [r["name"] for r in roots] == ["test day 1", "test day 2"]
    for index, root in enumerate(roots, 1):
        assert root["run_type"] == "chain"
        metadata = root["extra"]["metadata"]
        assert (metadata["loopsim_run_id"], metadata["day_index"]) == (run_id, index)
        assert metadata["external_date"] == "2025-06-02"
        assert f"day:{index}" in root["tags"]
        children = [r for r in runs.values() if r.get("parent_run_id") == root["id"]]
        assert [c["name"] for c in children] == ["day"]
        assert children[0]["run_type"] == "llm"
        assert children[0]["trace_id"] == root["trace_id"] == root["id"]
        assert "end_time" in root
        assert "end_time" in children[0]
    with database.read() as session:
        store = Store(session)
        (checkin,) = store.list_checkins(run_id)
        ((pair, _),) = store.pairs(checkin.id)
    # Nothing but the two days went out: the check-in's prediction is not readable
    # in a trace before the human's blind answer.
    assert len(runs) == 4
    assert pair.prediction
    assert pair.prediction.encode() not in bodies
    for secret in (secret_seed(database, run_id), API_KEY):
        assert secret.encode() not in bodies
    assert b"test day 1" in bodies  # the grep reads what was sent


class Gathering(ScriptedChatModel):
    """Holds each of the first ``n`` calls until all ``n`` are in flight together."""

    n: int = 3
    _waiting: list[Any] = PrivateAttr(default_factory=list)
    _all_in: Any = PrivateAttr(default=None)

    async def _agenerate(self, messages: Any, stop: Any = None, **kwargs: Any) -> Any:
        if self._all_in is None:
            self._all_in = asyncio.Event()
        if not self._all_in.is_set():
            self._waiting.append(1)
            if len(self._waiting) >= self.n:
                self._all_in.set()
            await asyncio.wait_for(self._all_in.wait(), 120)
        return await super()._agenerate(messages, stop, **kwargs)


def test_runs_served_at_once_never_share_a_trace(any_db):
    """`loopsim serve` steps runs side by side on one event loop: with three calls of
    three runs in flight together, each still nests under its own run's day."""
    from loopsim.service.worker import Service
    from tests.test_service import config, serve_until, start_runs, statuses

    ids = start_runs(any_db, 3, days=2)
    model = Gathering(script=[default_reply], n=len(ids))

    def factory(model_id: str, spec: Any, max_tokens: int) -> ChatHandle:
        return ChatHandle(model_id, model, version="scripted-1")

    service = Service(any_db, Settings(), factory, config(concurrency=3))
    done = lambda: set(statuses(any_db).values()) == {"completed"}  # noqa: E731
    with collect_runs() as collector:
        asyncio.run(serve_until([service], done, timeout=180))
    roots = collector.traced_runs
    assert sorted(r.name for r in roots) == sorted(f"test day {d}" for _ in ids for d in (1, 2))
    with any_db.read() as session:
        store = Store(session)
        agendas = {i: store.get_run(i).spec["charter"]["agenda"] for i in ids}
    assert len(set(agendas.values())) == 3
    for root in roots:
        agenda = agendas[root.extra["metadata"]["loopsim_run_id"]]
        (call,) = root.child_runs
        assert agenda in json.dumps(call.inputs)
