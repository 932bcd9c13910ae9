"""Endpoint faults, through both real clients of OpenAI-compatible servers (loopsim's light
one and langchain-openai), against a fault-injecting server on 127.0.0.1
(loopsim.testing.stubserver). Only the peer is fake."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select

from loopsim.chat.handle import build_chat
from loopsim.config import Settings
from loopsim.errors import ModelUnavailable
from loopsim.loop import Loop
from loopsim.record.store import Store
from loopsim.record.tables import Day, Run
from loopsim.schemas import DayStatus, RunStatus
from loopsim.service.worker import Service, ServiceConfig
from loopsim.testing.stubserver import StubOpenAI, default_text
from tests.conftest import make_run

MODEL = "openai:stub-model"


@pytest.fixture(autouse=True, params=["light", "langchain"])
def client(request, monkeypatch) -> str:
    """Every test here runs against both clients of OpenAI-compatible servers: loopsim's
    light one and langchain-openai (LOOPSIM_OPENAI_CLIENT, read by every Settings)."""
    monkeypatch.setenv("LOOPSIM_OPENAI_CLIENT", request.param)
    return str(request.param)


def settings_for(url: str, **kw) -> Settings:
    base = {
        "model_base_url": url,
        "model_timeout": 1.0,
        "model_retries": 8,
        "retry_initial_seconds": 0.01,
        "retry_max_seconds": 5.0,
    }
    return Settings(**{**base, **kw})


def only_day(database) -> Day:
    with database.read() as session:
        (day,) = session.scalars(select(Day)).all()
        return day


def test_every_transient_fault_is_retried_and_the_day_commits(database, spec):
    faults = [
        "429",
        "500",
        "502",
        "503",
        "truncate",
        "invalid_json",
        "reset",
        "stall",
        "stall_body",
    ]
    with StubOpenAI(faults=faults, retry_after=0.05, stall_seconds=3) as stub:
        settings = settings_for(stub.base_url, model_retries=len(faults))
        run_id = make_run(database, spec, model=MODEL)
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED, result.error
    assert stub.served == {**dict.fromkeys(faults, 1), "ok": 1}
    day = only_day(database)
    assert day.tokens_in
    assert day.tokens_out
    assert day.latency_ms >= 2000


def test_retry_after_is_honoured(database, spec):
    with StubOpenAI(faults=["429"], retry_after=1.0) as stub:
        settings = settings_for(stub.base_url)
        run_id = make_run(database, spec, model=MODEL)
        began = time.monotonic()
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
        took = time.monotonic() - began
    assert result.status == DayStatus.COMMITTED
    assert took >= 1.0  # backoff alone would have waited about 0.01 s


def test_a_client_error_is_not_retried(database, spec):
    with StubOpenAI(faults=["400"]) as stub:
        settings = settings_for(stub.base_url)
        run_id = make_run(database, spec, model=MODEL)
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert "HTTP 400" in result.error
    assert "attempts" not in result.error
    assert sum(stub.served.values()) == 1


def test_retries_are_bounded_and_the_reason_is_recorded(database, spec):
    with StubOpenAI(fault_fn=lambda n, body: "503") as stub:
        settings = settings_for(stub.base_url, model_retries=2)
        run_id = make_run(database, spec, model=MODEL)
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    assert stub.served == {"503": 3}
    assert (
        result.error
        == f"model {MODEL} failed after 3 attempts: HTTP 503: "
        + (result.error.split("HTTP 503: ", 1)[1])
    )
    day = only_day(database)
    assert day.status == DayStatus.FAILED
    assert day.error == result.error


@pytest.mark.parametrize("fault_every", [3])
def test_the_service_rides_out_faults_on_many_runs(any_db, spec, fault_every, client):
    ids = [make_run(any_db, spec, model=MODEL) for _ in range(4)]
    with any_db.write() as session:
        store = Store(session)
        for run_id in ids:
            run = store.get_run(run_id)
            run.spec = {**run.spec, "budget": {**run.spec["budget"], "days": 3}}
            store.set_status(run, RunStatus.RUNNING)

    def fault(n: int, body: dict) -> str | None:
        return ("429", "503", "reset")[n % 3] if n % fault_every == 0 else None

    with StubOpenAI(fault_fn=fault, retry_after=0.05, latency=0.02) as stub:
        settings = settings_for(stub.base_url)
        config = ServiceConfig(
            worker_id="w", concurrency=4, lease_seconds=5, poll_seconds=0.05, http_port=None
        )
        service = Service(any_db, settings, build_chat(settings), config)

        async def go() -> None:
            task = asyncio.ensure_future(service.serve(install_signals=False))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with any_db.read() as session:
                    if {r.status for r in session.scalars(select(Run))} == {"completed"}:
                        break
                await asyncio.sleep(0.1)
            service.request_stop()
            await task

        asyncio.run(go())
    with any_db.read() as session:
        days = session.scalars(select(Day)).all()
        assert {r.status for r in session.scalars(select(Run))} == {RunStatus.COMPLETED}
    assert len(days) == 12
    assert {d.status for d in days} == {DayStatus.COMMITTED}
    faults = sum(v for k, v in stub.served.items() if k != "ok")
    assert faults >= 4
    metrics = service.metrics.render().decode()
    assert f"loopsim_model_retries_total {float(faults)}" in metrics
    if client == "light":  # the service's own calls went through aiohttp (chat/transport.py)
        assert sum("aiohttp" in agent for agent in stub.user_agents()) >= len(days)


def test_retry_after_zero_does_not_turn_the_backoff_off(database, spec):
    """Five 429s that each say "Retry-After: 0": the backoff still grows, so the day
    rides out the burst instead of spending its retries at once."""
    with StubOpenAI(faults=["429"] * 5, retry_after=0) as stub:
        settings = settings_for(stub.base_url, retry_initial_seconds=0.05)
        run_id = make_run(database, spec, model=MODEL)
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED, result.error
    assert stub.served == {"429": 5, "ok": 1}
    # The time between the first 429 and the request that succeeded: 0.05 s doubling
    # over five retries, jittered to at least half, is 0.775 s at the least.
    assert stub.arrivals[-1] - stub.arrivals[0] >= 0.75


def test_each_validation_retry_sends_another_seed(database, spec):
    """An OpenAI-compatible server gets a seed, and a reply refused by validation is asked
    again with a different one, so a retry is not the same failed reply."""
    replies = iter(["not json", "still not json"])

    def reply(body: dict) -> str:
        return next(replies, None) or default_text(body)

    with StubOpenAI(reply=reply) as stub:
        settings = settings_for(stub.base_url)
        run_id = make_run(database, spec, model=MODEL)
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED, result.error
    seeds = [body.get("seed") for body in stub.requests]
    assert len(seeds) == 3
    assert all(isinstance(s, int) for s in seeds)
    assert len(set(seeds)) == 3


def test_a_server_refusing_json_schema_is_named_in_one_line_without_retries(database, spec):
    # llama-cpp-python's server answers json_schema with HTTP 500 and a validation error
    # whose useful part is on its second line.
    with StubOpenAI(fault_fn=lambda n, body: "llama_json_schema") as stub:
        settings = settings_for(stub.base_url, model_retries=4)
        run_id = make_run(database, spec, model=MODEL)
        (result,) = Loop(database, settings, build_chat(settings)).run_days(run_id, 1)
        assert result.status == DayStatus.FAILED
        assert stub.served == {"llama_json_schema": 1}  # not retried: it is no fault
        assert "\n" not in result.error
        assert "refuses response_format json_schema" in result.error
        assert "set LOOPSIM_RESPONSE_FORMAT=json_object" in result.error
        assert "[model] response_format" in result.error
        assert "Input should be 'text' or 'json_object'" in result.error
        assert "attempts" not in result.error
        json_object = settings_for(stub.base_url, response_format="json_object")
        (again,) = Loop(database, json_object, build_chat(json_object)).run_days(run_id, 1)
    assert again.status == DayStatus.COMMITTED, again.error
    assert stub.requests[-1]["response_format"]["type"] == "json_object"


def test_a_plain_server_error_keeps_the_servers_whole_message(database, spec):
    import openai

    from loopsim.chat.handle import ChatHandle

    class Failing:
        def invoke(self, *args, **kwargs):
            request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
            response = httpx.Response(400, request=request)
            raise openai.BadRequestError(
                "Error code: 400 - first line:\nthe useful part",
                response=response,
                body={"error": {"message": "first line:\nthe useful part"}},
            )

    handle = ChatHandle(MODEL, Failing(), structured="openai")  # type: ignore[arg-type]
    with pytest.raises(ModelUnavailable) as raised:
        handle.complete([], None)
    assert raised.value.message.endswith("HTTP 400: Error code: 400 - first line: the useful part")


def test_system_text_is_folded_into_the_first_user_turn_when_asked(database, spec):
    with StubOpenAI() as stub:
        run_id = make_run(database, spec, model=MODEL)
        keep = settings_for(stub.base_url)
        (first,) = Loop(database, keep, build_chat(keep)).run_days(run_id, 1)
        sent = stub.requests[-1]["messages"]
        system = [m["content"] for m in sent if m["role"] == "system"]
        assert system, sent  # the prompt has system text, sent as it is by default
        fold = settings_for(stub.base_url, system_messages="fold")
        (second,) = Loop(database, fold, build_chat(fold)).run_days(run_id, 1)
        folded = stub.requests[-1]["messages"]
    assert first.status == second.status == DayStatus.COMMITTED
    assert [m["role"] for m in folded if m["role"] == "system"] == []
    users = [m["content"] for m in folded if m["role"] == "user"]
    assert users[0].startswith("\n\n".join(system))
    assert folded[0]["role"] == "user"
    # `loopsim calls` shows the messages as the server got them, folded or not.
    with database.read() as session:
        recorded = {day.index: call.messages for call, day in Store(session).run_calls(run_id)}
    assert recorded[first.index] == sent
    assert recorded[second.index] == folded


def test_the_spec_can_fold_system_text_for_one_model():
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from loopsim.chat.handle import fold_system_text
    from loopsim.schemas import ModelSpec

    messages = [SystemMessage("persona"), HumanMessage("day"), AIMessage("a"), HumanMessage("b")]
    assert [(m.type, m.text) for m in fold_system_text(messages)] == [
        ("human", "persona\n\nday"),
        ("ai", "a"),
        ("human", "b"),
    ]
    factory = build_chat(Settings(model_base_url="http://127.0.0.1:9/v1"))
    assert factory(MODEL, ModelSpec(system_messages="fold"), 100).fold_system
    assert not factory(MODEL, ModelSpec(), 100).fold_system
