"""loopsim serve against the real OpenAI-compatible server llama-cpp-python ships
(`python -m llama_cpp.server`), serving the Gemma 270M GGUF on 127.0.0.1. Slow."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")

from loopsim.chat.handle import build_chat
from loopsim.chat.llamacpp import resolve_gguf
from loopsim.config import Settings
from loopsim.record.store import Store
from loopsim.record.tables import Day, Run
from loopsim.schemas import DayStatus, RunStatus
from loopsim.service.worker import Service, ServiceConfig
from tests.conftest import make_run

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    path, _ = resolve_gguf("gemma3-270m")
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(path),
            "--chat_format",
            "gemma",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--verbose",
            "False",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}")
            try:
                if httpx.get(base + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not come up in 120 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_service_runs_real_days_through_llama_cpp_server(database, spec, llama_server):
    """The endpoint path end to end: real HTTP, real tokens, real replies validated. Whether
    the 270M model's reply is a valid day is the model's business; every day must reach
    the server and come back with a reply (no endpoint error) and be recorded."""
    settings = Settings(
        model_base_url=llama_server,
        model_timeout=180,
        max_failed_days=2,
        max_retries=1,
        response_format="json_object",  # the form llama-cpp-python's server accepts
        system_messages="fold",  # --chat_format gemma drops system messages
    )
    run_id = make_run(database, spec, model="openai:gemma-3-270m")
    with database.write() as session:
        run = Store(session).get_run(run_id)
        run.spec = {**run.spec, "budget": {**run.spec["budget"], "days": 1}}
        Store(session).set_status(run, RunStatus.RUNNING)
    config = ServiceConfig(worker_id="w", concurrency=1, poll_seconds=0.2, http_port=None)
    service = Service(database, settings, build_chat(settings), config)

    def finished() -> bool:
        with database.read() as session:
            return session.get(Run, run_id).status in (RunStatus.COMPLETED, RunStatus.FAILED)

    async def go() -> None:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        deadline = time.monotonic() + 600
        while not finished() and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        service.request_stop()
        await task

    asyncio.run(go())
    with database.read() as session:
        days = session.scalars(select(Day).order_by(Day.index, Day.id)).all()
        run = session.get(Run, run_id)
        entries = Store(session).list_entries(run_id)
        assert Store(session).verify_chain(run_id).ok
    assert days
    # Days that hold an index are numbered densely; a failed try sits at the index it tried.
    held = [d.index for d in days if d.status != DayStatus.FAILED]
    assert held == list(range(1, len(held) + 1))
    assert all(d.index <= len(held) + 1 for d in days)
    for day in days:
        assert day.worker == "w"
        assert day.latency_ms > 0
        assert day.tokens_in > 100
        assert day.tokens_out > 0
        assert day.model_version.startswith("gemma")  # as the server names its model
        assert not (day.error or "").startswith("model "), day.error  # no endpoint failure
    if run.status == RunStatus.COMPLETED:
        assert days[-1].status == DayStatus.COMMITTED
        assert entries
    else:
        assert run.status == RunStatus.FAILED
        assert len(days) == 2
        assert not entries


def test_the_real_server_refusing_json_schema_is_one_line_and_folding_keeps_the_persona(
    llama_server,
):
    """What the howto says of llama_cpp.server: it refuses loopsim's default json_schema
    (one line naming the setting, no retries), and with --chat_format gemma it drops
    system text unless loopsim folds it (the prompt token counts show it)."""
    from langchain_core.messages import HumanMessage, SystemMessage

    from loopsim.errors import ModelUnavailable
    from loopsim.schemas import ModelSpec

    def handle(**kw):
        settings = Settings(model_base_url=llama_server, model_timeout=180, **kw)
        return build_chat(settings)("openai:gemma-3-270m", ModelSpec(temperature=0), 8)

    persona = "You are Dr. Test, an entomologist who studies how bees choose flowers. " * 4
    day = [HumanMessage("Say hello.")]
    with pytest.raises(ModelUnavailable) as refused:
        handle(retry_initial_seconds=0.01).complete(day, {"type": "object"})
    assert refused.value.attempts == 1
    assert "\n" not in refused.value.message
    assert "LOOPSIM_RESPONSE_FORMAT=json_object" in refused.value.message
    alone = handle().complete(day, None).tokens_in
    kept = handle().complete([SystemMessage(persona), *day], None).tokens_in
    folded = handle(system_messages="fold").complete([SystemMessage(persona), *day], None)
    assert kept == alone  # --chat_format gemma dropped the system message
    assert folded.tokens_in is not None
    assert alone is not None
    assert folded.tokens_in > alone + 40  # the persona reached the model
