"""What drives a run: only runs queued with `run start` are claimed by `loopsim serve`;
`run step` takes a run for the CLI until `run start` hands it back (issue 14, item 4)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loopsim.config import Settings
from loopsim.errors import InvalidState, LeaseLost
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record import leases as lease
from loopsim.record.store import Store
from loopsim.schemas import DayStatus, RunStatus, parse_spec
from loopsim.testing import scripted_factory
from loopsim.testing.stubserver import StubOpenAI
from tests.conftest import SPEC, make_run
from tests.test_serve_process import MODEL, Worker, snapshot, wait_for

TTL = dt.timedelta(seconds=30)


def test_a_run_stepped_from_the_cli_is_never_claimed(any_db, spec):
    run_id = make_run(any_db, spec)
    factory, _ = scripted_factory()
    Loop(any_db, Settings(), factory).run_days(run_id, 1)
    with any_db.read() as session:
        run = Store(session).get_run(run_id)
        assert run.status == RunStatus.RUNNING
        assert lease.driver(Store(session), run) == "run step"
    assert lease.claim(any_db, "w", TTL, 5) == []
    assert lease.queue_for_service(any_db, run_id) == (run_id, RunStatus.RUNNING)
    (claimed,) = lease.claim(any_db, "w", TTL, 5)
    assert claimed.run_id == run_id
    with any_db.read() as session:
        assert lease.driver(Store(session), Store(session).get_run(run_id)) == "serve w"


def test_stepping_a_run_whose_worker_died_takes_it_from_serve(any_db, spec):
    run_id = make_run(any_db, spec)
    lease.queue_for_service(any_db, run_id)
    (old,) = lease.claim(any_db, "dead-worker", TTL, 1)
    with any_db.write() as session:  # the worker died; its lease ran out
        run = Store(session).get_run(run_id)
        run.lease_expires_at = Store(session).db_now() - dt.timedelta(seconds=1)
    factory, _ = scripted_factory()
    Loop(any_db, Settings(), factory).run_days(run_id, 1)
    assert lease.claim(any_db, "dead-worker", TTL, 5) == []  # not even its own, now
    with any_db.write() as session:
        store = Store(session)
        run = store.get_run(run_id)
        with pytest.raises(LeaseLost):
            lease.fence(old)(store, run)


def test_a_served_run_paused_then_stepped_becomes_the_command_lines(any_db, spec):
    """service.md: `run step` refuses a run a live worker holds; pause it first. Paused,
    `run step` refused it as paused, and `run resume` queued it for serve again, which
    claimed it before the next `run step`: no way led from serve to the command line.
    Stepping a paused serve run now takes it for `run step` (and it stays paused, said
    so); resumed, it is stepped by hand, and no worker claims it."""
    run_id = make_run(any_db, spec)
    lease.queue_for_service(any_db, run_id)
    (held,) = lease.claim(any_db, "w", TTL, 1)
    factory, _ = scripted_factory()
    loop = Loop(any_db, Settings(), factory)
    with pytest.raises(InvalidState, match="being stepped by worker w"):
        loop.run_days(run_id, 1)
    with any_db.write() as session:  # `run pause`; the worker lets go at the boundary
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.PAUSED, "paused by a human")
    lease.release(any_db, [held])
    with pytest.raises(InvalidState, match="it is now driven by `run step`, not serve"):
        loop.run_days(run_id, 1)
    with any_db.read() as session:
        run = Store(session).get_run(run_id)
        assert run.status == RunStatus.PAUSED  # nothing stepped, nothing resumed
        assert lease.driver(Store(session), run) == "run step"
    with any_db.write() as session:  # `run resume`
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.RUNNING)
    assert lease.claim(any_db, "w", TTL, 5) == []
    assert [r.status for r in loop.run_days(run_id, 1)] == [DayStatus.COMMITTED]
    # A paused run the command line already drives is refused as paused, as before.
    with any_db.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.PAUSED, "paused by a human")
    with pytest.raises(InvalidState, match=r"is paused \(paused by a human\); `loopsim run resume"):
        loop.run_days(run_id, 1)


def test_run_start_refuses_what_it_cannot_hand_over(any_db, spec):
    run_id = make_run(any_db, spec)
    lease.queue_for_service(any_db, run_id)
    with pytest.raises(InvalidState, match="already queued"):
        lease.queue_for_service(any_db, run_id)
    with any_db.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.HALTED)
    with pytest.raises(InvalidState, match="halted"):
        lease.queue_for_service(any_db, run_id)


def test_run_list_shows_the_driver(sqlite_url, spec, cli_factory):
    factory, _ = scripted_factory()
    cli = cli_factory(sqlite_url, factory)
    database = dbmod.Database.open(sqlite_url)
    try:
        stepped, queued, fresh = (make_run(database, spec) for _ in range(3))
    finally:
        database.dispose()
    assert cli("run", "step", stepped).exit_code == 0
    assert cli("run", "start", queued).exit_code == 0
    rows = {r["id"]: r for r in json.loads(cli("run", "list", "--json").stdout)}
    assert rows[stepped]["status"] == rows[queued]["status"] == "running"
    assert rows[stepped]["driver"] == "run step"
    assert rows[queued]["driver"] == "serve"
    assert rows[fresh]["driver"] is None
    table = cli("run", "list").stdout
    assert "driver" in table.splitlines()[0]
    line = next(ln.strip() for ln in table.splitlines() if stepped in ln)
    assert line.endswith("run step")


def test_serve_never_steps_a_run_step_run_until_run_start(sqlite_url, tmp_path: Path):
    """A real `run step`, then a real `loopsim serve` on the same file: serve finishes a
    queued run and never touches the stepped one; `run start` then hands it over."""
    data = {**SPEC, "budget": {"days": 3}}
    database = dbmod.Database.open(sqlite_url)
    try:
        with database.write() as session:
            store = Store(session)
            stepped = store.create_run(parse_spec(data), name="stepped", model=MODEL).id
            control = store.create_run(parse_spec(data), name="control", model=MODEL).id
    finally:
        database.dispose()
    with StubOpenAI(latency=0.05) as stub:
        env = {
            **os.environ,
            "LOOPSIM_DATABASE_URL": sqlite_url,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
        }

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "loopsim", *args], env=env, capture_output=True, text=True
            )

        step = cli("run", "step", stepped)
        assert step.returncode == 0, step.stderr
        start = cli("run", "start", control)
        assert start.returncode == 0, start.stderr
        worker = Worker(sqlite_url, stub, tmp_path / "w.log", "--worker-id", "w1")
        try:
            # The worker polls every 0.1 s; by the time it completes the queued run it
            # has looked at the stepped one many times over.
            wait_for(
                lambda: snapshot(sqlite_url)[1][control].status == RunStatus.COMPLETED,
                120,
                "the queued run to complete",
            )
            days, runs = snapshot(sqlite_url)
            assert [(d.index, d.worker) for d in days[stepped]] == [(1, "cli")]
            assert runs[stepped].status == RunStatus.RUNNING
            claimed = {e.get("run_id") for e in worker.events() if e["event"] == "lease.claimed"}
            assert claimed == {control}
            shown = {r["id"]: r for r in json.loads(cli("run", "list", "--json").stdout)}
            assert shown[stepped]["driver"] == "run step"

            handed = cli("run", "start", stepped)
            assert handed.returncode == 0, handed.stderr
            wait_for(
                lambda: snapshot(sqlite_url)[1][stepped].status == RunStatus.COMPLETED,
                120,
                "serve to finish the handed-over run",
            )
        finally:
            worker.signal(signal.SIGTERM)
            worker.wait(timeout=30)
    days, _ = snapshot(sqlite_url)
    assert [d.index for d in days[stepped]] == [1, 2, 3]
    assert [d.worker for d in days[stepped]] == ["cli", "w1", "w1"]
    assert all(d.status == DayStatus.COMMITTED for d in days[stepped])
