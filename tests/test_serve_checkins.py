"""`loopsim serve` opening a check-in: its predictions (model calls on a thread of their
own) stop when the service does or the lease is lost, and a model that is down is asked
again after a pause, not at every poll. In-process, with a scripted model."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from sqlalchemy import func, select

from loopsim.config import Settings
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord, Run
from loopsim.schemas import RunStatus, parse_spec
from loopsim.service import openings
from loopsim.service.worker import Service
from loopsim.testing import default_reply, scripted_factory
from tests.conftest import SPEC, make_run
from tests.test_service import config, days_by_run

BEES = "Colonies follow the longest dances, so distance and nectar quality trade off there."
PROBES = 5


def checkin_run(database) -> str:
    """A running run whose first committed day makes a check-in of five probes due."""
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {
        "every_days": 1,
        "spot_check_probability": 0.0,
        "probes_per_checkin": PROBES,
    }
    data["probes"] = [f"What would you measure first at site {i}?" for i in range(PROBES)]
    run_id = make_run(database, parse_spec(data))
    with database.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.RUNNING)
    return run_id


class Predictions:
    """The scripted model's replies: a day's at once; each prediction after ``seconds``
    (or once :attr:`release` is set), or a dropped connection with ``down``."""

    def __init__(self, seconds: float = 0.0, *, down: bool = False) -> None:
        self.seconds, self.down = seconds, down
        self.made = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, messages: Any) -> str:
        if "Question:" not in messages[-1].text:
            return default_reply(messages)
        with self._lock:
            self.made += 1
        if self.down:
            raise ConnectionError("connection refused")
        self.release.wait(self.seconds)
        return BEES


async def until(done: Any, task: asyncio.Future[Any], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the service did not get there in time"
        if task.done():
            task.result()
        await asyncio.sleep(0.02)


def probe_calls(database, run_id: str) -> int:
    with database.read() as session:
        query = select(func.count()).where(CallRecord.run_id == run_id, CallRecord.role == "probe")
        return int(session.scalar(query) or 0)


def checkins_of(database, run_id: str) -> list[Any]:
    with database.read() as session:
        return list(Store(session).list_checkins(run_id))


def run_row(database, run_id: str) -> Run:
    with database.read() as session:
        return session.get(Run, run_id)


def apart_threads_end(timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while any(t.name.startswith("loopsim-apart") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "a check-in's thread is still running"
        time.sleep(0.05)


def test_a_stop_ends_check_in_predictions_and_keeps_the_calls_made(any_db):
    """Between two predictions the thread asks whether the service stops: it stops there
    with the calls it made kept, and opens no check-in, even with grace to spare."""
    run_id = checkin_run(any_db)
    model = Predictions(seconds=1.0)
    factory, _ = scripted_factory([model])
    service = Service(any_db, Settings(), factory, config(grace_seconds=120.0))

    async def scenario() -> None:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        await until(lambda: model.made >= 1, task)
        service.request_stop()
        await task

    asyncio.run(scenario())
    apart_threads_end()
    assert checkins_of(any_db, run_id) == []
    assert 1 <= model.made < PROBES
    assert probe_calls(any_db, run_id) == model.made  # every call made is kept
    assert [d.index for d in days_by_run(any_db)[run_id]] == [1]
    run = run_row(any_db, run_id)
    assert (run.status, run.lease_owner) == (RunStatus.RUNNING, None)


def stop_with_a_prediction_in_flight(service: Service, model: Predictions) -> None:
    """Stop ``service`` once a prediction is under way, the model holding it until the
    service has stopped; fails if serve waited for the prediction instead."""
    stopped = threading.Event()

    async def scenario() -> None:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        await until(lambda: model.made >= 1, task)
        service.request_stop()
        await task
        stopped.set()

    serving = threading.Thread(target=asyncio.run, args=(scenario(),))
    serving.start()
    try:
        assert stopped.wait(60.0), "serve waited for the prediction in flight"
    finally:
        model.release.set()
        serving.join(120.0)
    apart_threads_end()


def test_the_service_exits_without_waiting_for_a_prediction_in_flight(any_db):
    """A prediction in flight past the grace is abandoned: the process does not wait for
    its thread, and that thread makes no further call and writes nothing."""
    run_id = checkin_run(any_db)
    model = Predictions(seconds=600.0)  # until released
    factory, _ = scripted_factory([model])
    service = Service(any_db, Settings(), factory, config(grace_seconds=0.5))

    stop_with_a_prediction_in_flight(service, model)
    assert model.made == 1
    assert checkins_of(any_db, run_id) == []
    assert probe_calls(any_db, run_id) == 0  # its lease was released: nothing written
    assert run_row(any_db, run_id).lease_owner is None


def test_a_model_down_during_predictions_is_asked_again_after_a_pause(any_db, monkeypatch, caplog):
    """The run keeps its lease and waits before trying again: it is not let go and
    claimed back at every poll with its predictions started over."""
    monkeypatch.setattr(openings, "PAUSES", (60.0, 300.0))
    run_id = checkin_run(any_db)
    model = Predictions(down=True)
    factory, _ = scripted_factory([model])
    service = Service(any_db, Settings(), factory, config(grace_seconds=1.0))
    caplog.set_level(logging.INFO, logger="loopsim.service.worker")

    def failed() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == "checkin.failed"]

    async def scenario() -> tuple[int, int]:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        await until(lambda: model.made >= 1, task)
        await until(lambda: bool(failed()), task)
        await asyncio.sleep(2.0)  # 40 polls: the old worker claimed it again at each
        seen = (model.made, run_row(any_db, run_id).lease_generation)
        service.request_stop()  # ends the pause
        await task
        return seen

    made, generation = asyncio.run(scenario())
    assert (made, generation) == (1, 1)
    (record,) = failed()
    assert record.wait_s == 60.0
    assert "connection refused" in record.getMessage()
    assert probe_calls(any_db, run_id) == 1
    assert checkins_of(any_db, run_id) == []
    assert run_row(any_db, run_id).lease_owner is None


def test_predictions_are_logged_and_a_stop_names_the_opening_it_abandoned(any_db, caplog):
    """A line before each prediction, which may take minutes; and a stop that abandons a
    check-in being opened does not count it as a day."""
    run_id = checkin_run(any_db)
    model = Predictions(seconds=600.0)  # until released
    factory, _ = scripted_factory([model])
    service = Service(any_db, Settings(), factory, config(grace_seconds=0.5))
    caplog.set_level(logging.INFO, logger="loopsim.service.worker")

    def events(name: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if getattr(r, "event", None) == name]

    stop_with_a_prediction_in_flight(service, model)
    assert events("checkin.predicting") == [
        f"run {run_id}: opening check-in, predicting probe 1 of {PROBES}"
    ]
    assert events("stop.abandoned") == [
        "abandoned 1 check-in opening in flight; nothing of them was written"
    ]
