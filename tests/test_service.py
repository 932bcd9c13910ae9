"""`loopsim serve`'s Service, in-process, on SQLite and PostgreSQL, with a scripted model
at the langchain seam. The HTTP, subprocess and crash tests live in test_serve_*.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from loopsim.checkin.decision import decide
from loopsim.config import Settings
from loopsim.errors import ModelUnavailable
from loopsim.loop import Loop
from loopsim.record.store import Store
from loopsim.record.tables import Day, Run
from loopsim.schemas import DayStatus, Decision, RunStatus, parse_spec
from loopsim.service.worker import Service, ServiceConfig
from loopsim.testing import default_reply, scripted_factory
from tests.conftest import SPEC, Cli, make_run


def spec_for(agenda: str, days: int = 4, **checkins: Any):
    data = {**SPEC, "charter": {"agenda": agenda}, "budget": {"days": days}}
    if checkins:
        data["checkins"] = checkins
    return parse_spec(data)


def agenda_of(messages) -> str:
    """Which run a prompt belongs to: the spec's agenda is in the view."""
    text = messages[-1].text
    return next(line for line in text.splitlines() if line.startswith("Study "))


def start_runs(database, n: int, days: int = 4, **checkins: Any) -> list[str]:
    ids = []
    for i in range(n):
        run_id = make_run(database, spec_for(f"Study number {i} of the bees.", days, **checkins))
        with database.write() as session:
            store = Store(session)
            store.set_status(store.get_run(run_id), RunStatus.RUNNING)
        ids.append(run_id)
    return ids


def config(worker: str = "w1", **kw: Any) -> ServiceConfig:
    base = {"concurrency": 4, "lease_seconds": 3.0, "poll_seconds": 0.05, "grace_seconds": 5.0}
    return ServiceConfig(worker_id=worker, **{"http_port": None, **base, **kw})


async def serve_until(
    services: list[Service], done: Callable[[], bool], timeout: float = 120.0
) -> None:
    tasks = [asyncio.ensure_future(s.serve(install_signals=False)) for s in services]
    deadline = time.monotonic() + timeout
    try:
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError("the service did not get there in time")
            for task in tasks:
                if task.done():
                    task.result()
            await asyncio.sleep(0.05)
    finally:
        for service in services:
            service.request_stop()
        await asyncio.gather(*tasks)


def statuses(database) -> dict[str, str]:
    with database.read() as session:
        return {r.id: r.status for r in session.scalars(select(Run))}


def days_by_run(database) -> dict[str, list[Day]]:
    out: dict[str, list[Day]] = {}
    with database.read() as session:
        for day in session.scalars(select(Day).order_by(Day.run_id, Day.index, Day.id)):
            out.setdefault(day.run_id, []).append(day)
    return out


def test_serves_runs_to_completion_and_releases_its_leases(any_db):
    ids = start_runs(any_db, 3, days=4)
    factory, model = scripted_factory(delay=0.01, key_fn=agenda_of)
    service = Service(any_db, Settings(), factory, config(concurrency=2))
    done = lambda: set(statuses(any_db).values()) == {RunStatus.COMPLETED}  # noqa: E731
    asyncio.run(serve_until([service], done))
    days = days_by_run(any_db)
    for run_id in ids:
        assert [d.index for d in days[run_id]] == [1, 2, 3, 4]
        assert {d.status for d in days[run_id]} == {DayStatus.COMMITTED}
        assert {d.worker for d in days[run_id]} == {"w1"}
        assert all(d.lease_generation for d in days[run_id])
    with any_db.read() as session:
        assert all(r.lease_owner is None for r in session.scalars(select(Run)))
        assert all(Store(session).verify_chain(i).ok for i in ids)
    assert max(model.max_in_flight.values()) == 1
    metrics = service.metrics.render().decode()
    assert 'loopsim_days_total{status="committed"} 12.0' in metrics
    assert "loopsim_leases_held 0.0" in metrics
    assert 'loopsim_tokens_total{direction="out"}' in metrics


def test_metrics_count_the_calls_of_each_role_and_the_replies_not_used(database):
    """A model that cannot write digests shows on /metrics, not only in `loopsim calls`:
    each day's calls counted by role, used or not."""
    from loopsim.testing import DIGEST_ASKED

    data = {**SPEC, "budget": {"days": 6}, "digests": {"every_days": 2}}
    run_id = make_run(database, parse_spec(data))
    with database.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.RUNNING)

    def reply(messages: list[Any]) -> str:
        if DIGEST_ASKED in messages[0].text:
            return "Sorry, no digest today."
        return default_reply(messages)

    factory, _ = scripted_factory([reply])
    service = Service(database, Settings(max_retries=1), factory, config())
    done = lambda: statuses(database)[run_id] == RunStatus.COMPLETED  # noqa: E731
    asyncio.run(serve_until([service], done))
    metrics = service.metrics.render().decode()
    assert 'loopsim_model_calls_total{outcome="accepted",role="day"} 6.0' in metrics
    # Days 1-2 are due from day 3 and fail on days 3, 4 and 6: a call and its retry each.
    assert 'loopsim_model_calls_total{outcome="rejected",role="digest"} 6.0' in metrics
    assert 'loopsim_model_calls_total{outcome="accepted",role="digest"} 0.0' in metrics


def test_two_services_never_step_one_run_at_once(any_db):
    ids = start_runs(any_db, 6, days=5)
    factory, model = scripted_factory(delay=0.02, key_fn=agenda_of)
    services = [
        Service(any_db, Settings(), factory, config("w1", concurrency=3)),
        Service(any_db, Settings(), factory, config("w2", concurrency=3)),
    ]
    done = lambda: set(statuses(any_db).values()) == {RunStatus.COMPLETED}  # noqa: E731
    asyncio.run(serve_until(services, done, timeout=60))
    days = days_by_run(any_db)
    assert all([d.index for d in days[i]] == [1, 2, 3, 4, 5] for i in ids)
    assert {d.worker for run in days.values() for d in run} == {"w1", "w2"}
    assert set(model.max_in_flight.values()) == {1}, model.max_in_flight


def test_a_failing_model_fails_its_run_and_not_the_others(any_db):
    good_id, bad_id = start_runs(any_db, 2, days=3)
    with any_db.write() as session:
        session.get(Run, bad_id).model = "scripted:broken"
    good, _ = scripted_factory()
    broken, _ = scripted_factory([ConnectionError("connection reset by peer")])

    def factory(model_id, spec, max_tokens):
        return (broken if model_id == "scripted:broken" else good)(model_id, spec, max_tokens)

    service = Service(any_db, Settings(max_failed_days=2), factory, config())
    expected = {good_id: RunStatus.COMPLETED, bad_id: RunStatus.FAILED}
    done = lambda: statuses(any_db) == expected  # noqa: E731
    asyncio.run(serve_until([service], done))
    with any_db.read() as session:
        run = session.get(Run, bad_id)
    assert run.status_reason.startswith("2 failed days in a row; day 1: model scripted:broken")
    assert [d.status for d in days_by_run(any_db)[bad_id]] == [DayStatus.FAILED] * 2
    # What the failed calls cost is kept: one request each (this handle does not retry).
    assert [d.attempts for d in days_by_run(any_db)[bad_id]] == [1, 1]
    assert "loopsim_runs_failed_total 1.0" in service.metrics.render().decode()


def test_a_run_failed_for_its_failed_days_is_logged_with_the_reason(any_db, caplog):
    """The days' WARNING lines are followed by one ERROR line saying the run is failed,
    and why, as for a run whose model cannot be built."""
    (run_id,) = start_runs(any_db, 1, days=3)
    broken, _ = scripted_factory([ConnectionError("connection reset by peer")])
    service = Service(any_db, Settings(max_failed_days=2), broken, config())
    caplog.set_level(logging.INFO, logger="loopsim.service.worker")
    asyncio.run(serve_until([service], lambda: statuses(any_db)[run_id] == RunStatus.FAILED))
    said = [r for r in caplog.records if getattr(r, "event", None) == "run.failed"]
    (record,) = said
    assert record.levelno == logging.ERROR
    assert record.run_id == run_id
    assert record.error.startswith("2 failed days in a row; day 1: model scripted:test")
    assert record.getMessage() == f"run {run_id} failed: {record.error}"


def test_a_resumed_run_survives_one_failed_day_under_serve(any_db, any_url):
    """Issue 19: the streak that fails a run starts afresh at `run resume`, for the
    service as for `run step`."""
    run_id = make_run(any_db, spec_for("Study number 0 of the bees.", days=2))
    bad, _ = scripted_factory(['{"entries": []}'])
    cli = Cli(any_url, bad, max_failed_days=2)
    cli("run", "step", run_id)
    cli("run", "step", run_id)
    assert statuses(any_db)[run_id] == RunStatus.FAILED
    assert cli("run", "resume", run_id).exit_code == 0
    assert cli("run", "start", run_id).exit_code == 0
    # One more invalid day (three attempts), then good ones.
    flaky, _ = scripted_factory(['{"entries": []}'] * 3 + [default_reply])
    service = Service(any_db, Settings(max_failed_days=2), flaky, config())
    settled = {RunStatus.COMPLETED, RunStatus.FAILED}
    asyncio.run(serve_until([service], lambda: statuses(any_db)[run_id] in settled))
    assert statuses(any_db)[run_id] == RunStatus.COMPLETED
    days = [d.status for d in days_by_run(any_db)[run_id]]
    assert days == [DayStatus.FAILED] * 3 + [DayStatus.COMMITTED] * 2


def test_a_model_that_cannot_be_built_fails_the_run_with_the_reason(any_db):
    (run_id,) = start_runs(any_db, 1)

    def factory(model_id, spec, max_tokens):
        raise ModelUnavailable("provider 'nope' needs its langchain package")

    service = Service(any_db, Settings(), factory, config())
    asyncio.run(serve_until([service], lambda: statuses(any_db)[run_id] == RunStatus.FAILED))
    with any_db.read() as session:
        assert "needs its langchain package" in session.get(Run, run_id).status_reason


def test_pause_takes_effect_at_the_day_boundary_and_resume_is_noticed(any_db):
    (run_id,) = start_runs(any_db, 1, days=50)
    factory, _ = scripted_factory(delay=0.1)
    service = Service(any_db, Settings(), factory, config(poll_seconds=0.5))

    def set_status(status):
        with any_db.write() as session:
            store = Store(session)
            store.set_status(store.get_run(run_id, lock=True), status)

    def count() -> int:
        return len(days_by_run(any_db).get(run_id, []))

    async def scenario() -> dict[str, float]:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        while count() < 2:
            await asyncio.sleep(0.02)
        set_status(RunStatus.PAUSED)
        paused_at = count()
        await asyncio.sleep(1.0)
        after_pause = count()
        held_while_paused = dict(service.held)
        set_status(RunStatus.RUNNING)
        resumed = time.monotonic()
        while count() <= after_pause:
            await asyncio.sleep(0.02)
        noticed = time.monotonic() - resumed
        service.request_stop()
        await task
        return {
            "paused_at": paused_at,
            "after_pause": after_pause,
            "noticed": noticed,
            "held": len(held_while_paused),
        }

    seen = asyncio.run(scenario())
    # At most the day in flight when the pause landed was committed after it.
    assert seen["after_pause"] - seen["paused_at"] <= 1
    assert seen["held"] == 0  # the paused run's lease was given back
    assert seen["noticed"] < 2.0


def test_stop_abandons_a_day_in_flight_without_a_trace(any_db):
    (run_id,) = start_runs(any_db, 1)
    factory, model = scripted_factory(delay=30)
    service = Service(any_db, Settings(), factory, config(grace_seconds=0.2))

    async def scenario() -> float:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        while not model.max_in_flight:
            await asyncio.sleep(0.02)
        began = time.monotonic()
        service.request_stop()
        await task
        return time.monotonic() - began

    took = asyncio.run(scenario())
    assert took < 3.0
    assert days_by_run(any_db) == {}
    with any_db.read() as session:
        run = session.get(Run, run_id)
    assert (run.status, run.lease_owner) == (RunStatus.RUNNING, None)


def test_a_cancelled_day_imports_nothing_on_the_event_loop():
    """Cancelling a day at stop passes its CancelledError through the retry predicate.
    That predicate imported the openai SDK when no model had: seconds of the event loop
    on a busy machine, spent inside the stop's grace period."""
    code = (
        "import asyncio, sys\n"
        "from loopsim.chat.faults import is_transient\n"
        "assert 'openai' not in sys.modules\n"
        "print(is_transient(asyncio.CancelledError()), 'openai' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def test_a_check_in_posts_a_webhook_and_the_run_waits(any_db):
    from tests.test_serve_http import WebhookSink

    (run_id,) = start_runs(any_db, 1, days=20, every_days=2, spot_check_probability=0.0)
    factory, _ = scripted_factory()
    with WebhookSink(fail_first=1) as sink:
        settings = Settings(webhook_url=sink.url + "?token=secret-in-query")
        service = Service(any_db, settings, factory, config())
        asyncio.run(serve_until([service], lambda: len(sink.received) == 1))
    (payload,) = sink.received
    assert payload["event"] == "checkin.opened"
    assert payload["run_id"] == run_id
    assert payload["review"] == f"loopsim checkin review {payload['checkin_id']}"
    assert sink.attempts == 2  # the first POST got a 503 and was retried
    assert statuses(any_db)[run_id] == RunStatus.AWAITING_CHECKIN
    assert len(days_by_run(any_db)[run_id]) == 2


def test_healthz_and_metrics_over_http(any_db):
    start_runs(any_db, 1, days=2)
    factory, _ = scripted_factory()
    service = Service(any_db, Settings(), factory, config(http_port=0))
    seen: dict[str, Any] = {}

    def done() -> bool:
        if service.http is None or statuses(any_db) != {
            next(iter(statuses(any_db))): RunStatus.COMPLETED
        }:
            return False
        seen["health"] = httpx.get(service.http.address + "/healthz").json()
        seen["metrics"] = httpx.get(service.http.address + "/metrics").text
        seen["missing"] = httpx.get(service.http.address + "/nope").status_code
        return True

    asyncio.run(serve_until([service], done))
    assert seen["health"]["status"] == "ok"
    assert seen["health"]["worker"] == "w1"
    assert 'loopsim_days_total{status="committed"} 2.0' in seen["metrics"]
    assert "loopsim_day_seconds_bucket" in seen["metrics"]
    assert seen["missing"] == 404
    assert service.http.address.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("reply", [default_reply])
def test_lost_lease_cancels_the_day_and_writes_nothing(any_db, reply):
    (run_id,) = start_runs(any_db, 1)
    factory, model = scripted_factory([reply], delay=1.5)
    service = Service(any_db, Settings(), factory, config(lease_seconds=3.0))

    async def scenario() -> None:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        while not model.max_in_flight:
            await asyncio.sleep(0.02)
        with any_db.write() as session:  # another worker takes the run over
            run = session.get(Run, run_id)
            run.lease_owner, run.lease_generation = "usurper", run.lease_generation + 1
        # The heartbeat (every 1 s) notices and drops the day: wait for that, however
        # long a busy machine makes it take.
        deadline = time.monotonic() + 120
        while "loopsim_leases_lost_total 1.0" not in service.metrics.render().decode():
            assert time.monotonic() < deadline, "the lost lease was never noticed"
            await asyncio.sleep(0.05)
        service.request_stop()
        await task

    asyncio.run(scenario())
    assert days_by_run(any_db) == {}
    assert "loopsim_leases_lost_total 1.0" in service.metrics.render().decode()
    with any_db.read() as session:
        assert session.get(Run, run_id).lease_owner == "usurper"


def test_no_model_call_after_the_lease_is_taken_over_mid_day(any_db):
    """Issue 18: a worker woken from a freeze must not call the model for a run another
    worker took over. The lease is checked against the database before every call of a
    day's conversation, not only before planning and after the reply."""
    (run_id,) = start_runs(any_db, 1)

    def taken_over_meanwhile(messages) -> str:
        # While this call is out, another worker takes the run over (as if this one had
        # been frozen past its lease); the reply is invalid, so the day would ask again.
        with any_db.write() as session:
            run = session.get(Run, run_id)
            run.lease_owner, run.lease_generation = "usurper", run.lease_generation + 1
        return '{"entries": []}'

    script = [taken_over_meanwhile, '{"entries": []}', '{"entries": []}', default_reply]
    factory, model = scripted_factory(script)
    # A long lease: the heartbeat (every 10 s) must not be what notices.
    service = Service(any_db, Settings(), factory, config(lease_seconds=30.0))
    lost = lambda: "loopsim_leases_lost_total 1.0" in service.metrics.render().decode()  # noqa: E731
    asyncio.run(serve_until([service], lost, timeout=60))
    assert len(model.calls) == 1  # the retry of the invalid reply never reached the model
    assert days_by_run(any_db) == {}
    with any_db.read() as session:
        assert session.get(Run, run_id).lease_owner == "usurper"


def test_a_release_racing_the_heartbeat_is_not_a_lost_lease(any_db, monkeypatch):
    """Issue 18 item 7: a run that yields (or goes idle) is released while the heartbeat
    is renewing; the renewal then misses it, which is no lost lease."""
    import datetime as dt

    from loopsim.record import leases

    (run_id,) = start_runs(any_db, 1)
    factory, _ = scripted_factory()
    service = Service(any_db, Settings(), factory, config(lease_seconds=1.5))
    (held,) = leases.claim(any_db, "w1", dt.timedelta(seconds=30), 1)
    service.held[run_id] = held
    real_renew, real_count = leases.renew, service._pending.refresh
    rounds: list[int] = []

    def racing_renew(db, held_now, ttl):
        # The run's task ended and its lease was released while the heartbeat was out.
        leases.release(db, held_now)
        service.held.pop(run_id, None)
        return real_renew(db, held_now, ttl)

    async def counted() -> None:  # the heartbeat's last step before it handles the renewal
        rounds.append(1)
        await real_count()

    monkeypatch.setattr(leases, "renew", racing_renew)
    monkeypatch.setattr(service._pending, "refresh", counted)

    async def scenario() -> None:
        beat = asyncio.ensure_future(service._heartbeat())
        deadline = time.monotonic() + 60
        while len(rounds) < 2:  # the second round begins after the first was handled
            assert time.monotonic() < deadline, "the heartbeat did not beat twice"
            await asyncio.sleep(0.05)
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat

    try:
        asyncio.run(scenario())
    finally:
        service._db_pool.shutdown(wait=True)
    assert service._lost == set()
    assert run_id not in service._deadline
    assert "loopsim_leases_lost_total 0.0" in service.metrics.render().decode()


def test_reads_run_where_they_cannot_stall_the_loop(any_db, monkeypatch):
    """SQLite's reads run on the event loop (in WAL mode they wait for no lock), except a
    run's first turn after its claim, whose plan may load a tokenizer; PostgreSQL's reads
    wait on the network, so every one goes to the worker's pool."""
    from loopsim.loop import Loop
    from loopsim.record import leases

    seen: dict[str, list[str]] = {"turn": [], "check": []}
    next_day, check_many = Loop.next_day, leases.check_many

    def turn_where(self, *args, **kwargs):
        seen["turn"].append(threading.current_thread().name)
        return next_day(self, *args, **kwargs)

    def check_where(*args, **kwargs):
        seen["check"].append(threading.current_thread().name)
        return check_many(*args, **kwargs)

    monkeypatch.setattr(Loop, "next_day", turn_where)
    monkeypatch.setattr(leases, "check_many", check_where)
    start_runs(any_db, 2, days=3)
    factory, _ = scripted_factory()
    service = Service(any_db, Settings(), factory, config(concurrency=2))
    done = lambda: set(statuses(any_db).values()) == {RunStatus.COMPLETED}  # noqa: E731
    asyncio.run(serve_until([service], done))
    main = threading.main_thread().name
    pooled = [name.startswith("loopsim-db") for name in seen["turn"]]
    assert len(seen["turn"]) >= 8  # 3 days and the turn that finds the budget spent, each
    assert seen["check"]
    if any_db.dialect == "sqlite":
        assert 2 <= sum(pooled) < len(pooled)  # a first turn per claim (one a run, here)
        assert all(name == main for name, p in zip(seen["turn"], pooled, strict=True) if not p)
        assert set(seen["check"]) == {main}
    else:
        assert all(pooled)
        assert all(name.startswith("loopsim-db") for name in seen["check"])


@pytest.mark.parametrize("lexical", [True, False])
def test_the_check_in_test_leaves_the_loop_when_it_may_embed(database, monkeypatch, lexical):
    """Before each day the worker asks whether a check-in is due, in the read that plans
    the day. With the word-count cosine that is a read, made on the event loop once the
    run's first plan (which may load a tokenizer) is done; an embedder (a model, or a
    request to an embeddings endpoint) must not block the loop, so the test goes to the
    pool."""
    from loopsim.checkin import drift
    from loopsim.loop import Loop

    where: list[str] = []
    due = Loop._due

    def due_where(self, *args, **kwargs):
        where.append(threading.current_thread().name)
        return due(self, *args, **kwargs)

    monkeypatch.setattr(Loop, "_due", due_where)
    start_runs(database, 1, days=3)
    factory, _ = scripted_factory()
    similarity = drift.lexical_similarity if lexical else (lambda a, b: 1.0)
    service = Service(database, Settings(), factory, config(), similarity=similarity)
    done = lambda: set(statuses(database).values()) == {RunStatus.COMPLETED}  # noqa: E731
    asyncio.run(serve_until([service], done))
    assert len(where) == 4  # at the claim, then after each of the 3 days
    assert where[0].startswith("loopsim-db")  # the claim's turn plans a first day
    if lexical:
        assert set(where[1:]) == {threading.main_thread().name}
    else:
        assert all(name.startswith("loopsim-db") for name in where)


def test_a_check_in_left_due_by_a_killed_worker_opens_before_the_next_day(any_db):
    """A worker killed between committing a day and testing for a check-in leaves one due
    with nobody to open it. The next worker to claim the run tests first: the check-in
    covers the days that made it due, and no further day is stepped past it (a future-date
    leak or a spot check is judged on the last day alone, so a day past it would hide it)."""
    (run_id,) = start_runs(any_db, 1, days=20, every_days=3, spot_check_probability=0.0)
    factory, _ = scripted_factory()
    loop = Loop(any_db, Settings(), factory)
    for _ in range(3):  # as the killed worker did: days committed, no check-in test after
        assert loop.step(run_id).status == DayStatus.COMMITTED

    service = Service(any_db, Settings(), factory, config())
    asyncio.run(serve_until([service], lambda: statuses(any_db)[run_id] != RunStatus.RUNNING))
    assert statuses(any_db)[run_id] == RunStatus.AWAITING_CHECKIN
    assert [d.index for d in days_by_run(any_db)[run_id]] == [1, 2, 3]
    with any_db.read() as session:
        (checkin,) = Store(session).list_checkins(run_id)
    assert (checkin.reason, checkin.first_day_index, checkin.last_day_index) == (
        "scheduled",
        1,
        3,
    )


def test_the_pending_gauge_moves_with_check_ins_not_a_heartbeat_later(database):
    """/metrics' pending check-ins are read when this worker opens one, when it starts and
    when it claims a run back from a decided check-in. The lease of ten minutes puts the
    first heartbeat (which also reads them) 200 s away, past any wait of this test."""

    def pending(service: Service) -> str:
        found = re.search(
            r"^loopsim_checkins_pending (\S+)$", service.metrics.render().decode(), re.M
        )
        assert found is not None
        return found.group(1)

    (run_id,) = start_runs(
        database, 1, days=3, every_days=2, spot_check_probability=0.0, final=False
    )
    factory, _ = scripted_factory()
    first = Service(database, Settings(), factory, config(lease_seconds=600.0))
    asyncio.run(serve_until([first], lambda: pending(first) == "1.0"))
    assert statuses(database)[run_id] == RunStatus.AWAITING_CHECKIN

    # A worker started later counts the check-in waiting from its start.
    second = Service(database, Settings(), factory, config("w2", lease_seconds=600.0))
    seen: list[str] = []

    def decided_and_counted() -> bool:
        if not seen:
            if second.health()["status"] == "starting":
                return False
            seen.append(pending(second))
            with database.read() as session:
                (checkin,) = Store(session).list_checkins(run_id)
            decide(database, checkin.id, Decision.APPROVE)
        return pending(second) == "0.0" and statuses(database)[run_id] == RunStatus.COMPLETED

    asyncio.run(serve_until([second], decided_and_counted))
    assert seen == ["1.0"]


def test_serve_opens_the_last_checkin_of_a_spent_budget_and_completes_on_approval(database):
    """Days after the last scheduled check-in were never reviewed when the budget ran
    out: the worker now opens a last `budget` check-in, and completes the run once a
    human approves it."""
    (run_id,) = start_runs(database, 1, days=3, every_days=2, spot_check_probability=0.0)
    factory, _ = scripted_factory()
    service = Service(database, Settings(), factory, config())

    def checkins() -> list[Any]:
        with database.read() as session:
            return list(Store(session).list_checkins(run_id))

    def approve_each_and_complete() -> bool:
        waiting = [c for c in checkins() if c.decision is None]
        for checkin in waiting:
            decide(database, checkin.id, Decision.APPROVE)
        return statuses(database)[run_id] == RunStatus.COMPLETED

    asyncio.run(serve_until([service], approve_each_and_complete))
    assert [(c.reason, c.first_day_index, c.last_day_index) for c in checkins()] == [
        ("scheduled", 1, 2),
        ("budget", 3, 3),
    ]


def test_the_pending_gauge_shows_the_read_started_last_and_survives_a_failed_one(caplog):
    """PostgreSQL's reads run on a pool, so two reads of the count may overlap: the one
    asked first may answer last, and its older count must not overwrite the newer. A read
    that fails (a dropped connection the driver reports raw) leaves the last value."""
    from prometheus_client import CollectorRegistry, Gauge

    from loopsim.service.events import PendingCount

    gauge = Gauge("pending", "test", registry=CollectorRegistry())
    answers: list[asyncio.Future[int]] = []

    async def read() -> int:
        answers.append(asyncio.get_running_loop().create_future())
        return await answers[-1]

    async def scenario() -> list[float]:
        count = PendingCount(gauge, read)
        seen = []
        older = asyncio.ensure_future(count.refresh())
        newer = asyncio.ensure_future(count.refresh())
        while len(answers) < 2:
            await asyncio.sleep(0)
        answers[1].set_result(1)  # the newer read answers first
        await newer
        seen.append(gauge._value.get())
        answers[0].set_result(0)
        await older
        seen.append(gauge._value.get())
        failing = asyncio.ensure_future(count.refresh())
        while len(answers) < 3:
            await asyncio.sleep(0)
        answers[2].set_exception(ConnectionResetError("server closed the connection"))
        await failing  # logged, not raised
        seen.append(gauge._value.get())
        return seen

    assert asyncio.run(scenario()) == [1.0, 1.0, 1.0]
    assert "counting check-ins failed: ConnectionResetError" in caplog.text
