"""`loopsim serve` as a real process: SIGTERM, SIGKILL at random moments, SIGSTOP past
its lease, two workers on one database, and the CLI deciding while it runs. The model is
a real OpenAI-compatible HTTP server on 127.0.0.1 (loopsim.testing.stubserver), reached through
langchain-openai."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from loopsim.record import db as dbmod
from loopsim.record.db import normalize_url, sqlite_path
from loopsim.record.store import Store
from loopsim.record.tables import Day, Run
from loopsim.schemas import DayStatus, RunStatus, parse_spec
from loopsim.testing import write_locked
from loopsim.testing.stubserver import StubOpenAI
from tests.conftest import SPEC

MODEL = "openai:stub-model"
TRIALS = int(os.environ.get("LOOPSIM_CRASH_TRIALS", "20"))


def agenda_key(body: dict) -> str:
    text = body["messages"][-1]["content"]
    return next((ln for ln in text.splitlines() if ln.startswith("Study ")), "?")


@pytest.fixture
def stub() -> Iterator[StubOpenAI]:
    with StubOpenAI(latency=0.15, key_fn=agenda_key) as server:
        yield server


def create_runs(url: str, n: int, days: int, **checkins) -> list[str]:
    database = dbmod.Database.open(url)
    ids = []
    try:
        for i in range(n):
            data = {**SPEC, "charter": {"agenda": f"Study number {i} of the bees."}}
            data["budget"] = {"days": days}
            if checkins:
                data["checkins"] = checkins
            with database.write() as session:
                store = Store(session)
                run = store.create_run(parse_spec(data), name=f"r{i}", model=MODEL)
                store.set_status(run, RunStatus.RUNNING)
                ids.append(run.id)
    finally:
        database.dispose()
    return ids


class Worker:
    def __init__(self, url: str, stub: StubOpenAI, log: Path, *args: str) -> None:
        env = {
            **os.environ,
            "LOOPSIM_DATABASE_URL": url,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            "LOOPSIM_RETRY_INITIAL_SECONDS": "0.05",
            "LOOPSIM_MODEL_TIMEOUT": "5",
        }
        self.log = log
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loopsim",
                "serve",
                "--http",
                "off",
                "--log-format",
                "json",
                "--poll-seconds",
                "0.1",
                *args,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logged(self, event: str) -> bool:
        if self.proc.poll() is not None and not self.log.exists():
            raise AssertionError(f"the worker exited {self.proc.returncode} before logging")
        return any(e.get("event") == event for e in self.events())

    def events(self) -> list[dict]:
        return [
            json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")
        ]


def snapshot(url: str) -> tuple[dict[str, list[Day]], dict[str, Run]]:
    database = dbmod.Database.open(url)
    try:
        with database.read() as session:
            days: dict[str, list[Day]] = {}
            stmt = select(Day).options(selectinload(Day.entries))
            for day in session.scalars(stmt.order_by(Day.run_id, Day.index)):
                days.setdefault(day.run_id, []).append(day)
            runs = {r.id: r for r in session.scalars(select(Run))}
            for run_id in runs:
                verified = Store(session).verify_chain(run_id)
                assert verified.ok, verified.broken
        return days, runs
    finally:
        database.dispose()


def assert_whole(days: dict[str, list[Day]]) -> None:
    """No gap, no duplicate, and every committed day has its entries."""
    for run_days in days.values():
        assert [d.index for d in run_days] == list(range(1, len(run_days) + 1))
        for day in run_days:
            assert day.status != DayStatus.COMMITTED or len(day.entries) > 0
        generations = [d.lease_generation for d in run_days]
        assert generations == sorted(generations), "a stale lease wrote after a newer one"


def within(predicate, timeout: float) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_for(predicate, timeout: float, what: str) -> None:
    if not within(predicate, timeout):
        raise AssertionError(f"timed out waiting for {what}")


def in_transaction(url: str) -> bool:
    """Whether some process has sat inside a write transaction for a while: SQLite's
    write lock stays taken through several probes, or PostgreSQL shows a session idle in
    a transaction for over two seconds."""
    path = sqlite_path(normalize_url(url))
    if path is None:
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                stuck = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND state IN ('idle in transaction', 'idle in transaction (aborted)') "
                    "AND now() - state_change > interval '2 seconds'"
                ).scalar()
        finally:
            engine.dispose()
        return bool(stuck)
    for _ in range(5):  # a live worker holds the lock for milliseconds at a time
        if not write_locked(path):
            return False
        time.sleep(0.3)
    return True


def stop_while_waiting(worker: Worker, stub: StubOpenAI, keys: list[str]) -> None:
    """SIGSTOP ``worker`` while each of its runs has a request out at the stub, where a
    worker spends most of its time; a reply landing between the look and the stop means
    another try. A stop inside a day's commit would hold SQLite's one write lock, and no
    other worker could take over until it resumed (docs/service.md, "A frozen writer")."""
    for _ in range(50):
        wait_for(lambda: all(stub.in_flight(k) for k in keys), 60, "every run at the model")
        worker.signal(signal.SIGSTOP)
        if all(stub.in_flight(k) for k in keys):
            return
        worker.signal(signal.SIGCONT)
    raise AssertionError("never stopped the worker with every run waiting on the model")


def committed(url: str) -> int:
    days, _ = snapshot(url)
    return sum(d.status == DayStatus.COMMITTED for run in days.values() for d in run)


def test_sigterm_finishes_or_abandons_and_exits_zero_within_the_bound(any_url, stub, tmp_path):
    create_runs(any_url, 3, days=50)
    worker = Worker(any_url, stub, tmp_path / "w.log", "--grace-seconds", "2")
    try:
        wait_for(lambda: committed(any_url) >= 4, 60, "four days")
        began = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0
        took = time.monotonic() - began
    finally:
        worker.kill()
    assert took < 2 + 5
    days, runs = snapshot(any_url)
    assert_whole(days)
    assert all(r.lease_owner is None and r.status == RunStatus.RUNNING for r in runs.values())
    events = {e["event"] for e in worker.events()}
    assert {"serve.start", "lease.claimed", "day.committed", "stop", "serve.stop"} <= events
    # On uvloop's event loop wherever the extra is installed (`make setup` installs it).
    (start,) = [e for e in worker.events() if e["event"] == "serve.start"]
    assert start["loop"] == ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(any_url, stub, tmp_path):
    ids = create_runs(any_url, 3, days=10_000)
    rng = random.Random(int(os.environ.get("LOOPSIM_CRASH_SEED", "7")))
    seen = 0
    for trial in range(TRIALS):
        log = tmp_path / f"w{trial}.log"
        worker = Worker(any_url, stub, log, "--worker-id", "crashy", "--concurrency", "3")
        # The kill lands at a random moment of the worker's work, not of its start-up,
        # however long importing takes on a busy machine.
        wait_for(lambda w=worker: w.logged("serve.start"), 120, f"trial {trial}'s start")
        if trial == 0:
            # On a busy machine a first day can take longer than any kill delay; wait
            # for one, so the trials that follow have committed work to lose or keep.
            wait_for(lambda: committed(any_url) > 0, 120, "the first committed day")
        time.sleep(rng.uniform(0.2, 2.5))
        worker.kill()
        days, _runs = snapshot(any_url)
        assert_whole(days)
        total = sum(len(v) for v in days.values())
        assert total >= seen, f"trial {trial}: days went missing"
        seen = total
    assert seen > 0, "no trial ever committed a day"
    # A restart carries on where the last kill left off.
    worker = Worker(any_url, stub, tmp_path / "w.log", "--worker-id", "crashy")
    try:
        wait_for(lambda: committed(any_url) >= seen + 3, 60, "days after the restart")
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(timeout=15)
    days, _ = snapshot(any_url)
    assert_whole(days)
    assert set(days) <= set(ids)


def test_a_worker_restarted_under_a_new_id_says_whose_leases_it_waits_for(any_url, stub, tmp_path):
    create_runs(any_url, 2, days=10_000)
    # Long leases, so that they outlive the next worker's start on a busy machine.
    first = Worker(
        any_url, stub, tmp_path / "first.log", "--worker-id", "first", "--lease-seconds", "300"
    )
    try:
        wait_for(lambda: committed(any_url) > 0, 120, "the first worker's first day")
    finally:
        first.kill()  # SIGKILL: its leases stay behind
    second = Worker(any_url, stub, tmp_path / "second.log", "--worker-id", "second")
    try:
        wait_for(lambda: second.logged("serve.start"), 120, "the second worker's start")
        waiting = [e for e in second.events() if e["event"] == "lease.waiting"]
        assert [(e["owner"], e["runs"]) for e in waiting] == [("first", 2)]
        assert "--worker-id" in waiting[0]["msg"]
        # Every line names its worker (under --processes, workers share one stderr).
        assert {e.get("worker") for e in second.events()} == {"second"}
    finally:
        second.signal(signal.SIGTERM)
        second.wait(timeout=60)
    # The advice holds: the same id takes its runs back at once, not in 30 s.
    again = Worker(any_url, stub, tmp_path / "again.log", "--worker-id", "first")
    try:
        wait_for(lambda: again.logged("lease.claimed"), 120, "the first id's runs back")
        assert not again.logged("lease.waiting")
    finally:
        again.signal(signal.SIGTERM)
        again.wait(timeout=60)


def test_a_worker_frozen_past_its_lease_never_writes(any_url, stub, tmp_path):
    ids = create_runs(any_url, 2, days=10_000)
    keys = [f"Study number {i} of the bees." for i in range(2)]
    a = Worker(any_url, stub, tmp_path / "a.log", "--worker-id", "a", "--lease-seconds", "2")
    b = None

    def b_wrote() -> bool:
        return "b" in {d.worker for run in snapshot(any_url)[0].values() for d in run}

    try:
        wait_for(lambda: committed(any_url) >= 2, 60, "worker a's first days")
        for _ in range(5):
            stop_while_waiting(a, stub, keys)
            if b is None:
                b = Worker(
                    any_url, stub, tmp_path / "b.log", "--worker-id", "b", "--lease-seconds", "2"
                )
            if within(b_wrote, 60):
                break
            # Stopped inside a write after all (its heartbeat renews leases in one): on
            # SQLite nobody can write until it resumes. Let it, and stop it again.
            assert in_transaction(any_url), "worker b never took over, and no lock kept it out"
            a.signal(signal.SIGCONT)
        else:
            raise AssertionError("worker b never took over")
        a.signal(signal.SIGCONT)
        # a wakes with a stale lease and possibly a finished day in hand, and finds out
        # (its heartbeat or its refused commit) and lets go.
        wait_for(lambda: a.logged("lease.lost"), 120, "worker a to notice its lost lease")
    finally:
        for w in (a, b):
            if w is not None:
                w.signal(signal.SIGCONT)
                w.signal(signal.SIGTERM)
                w.wait(timeout=15)
    days, runs = snapshot(any_url)
    assert_whole(days)  # includes: generations never go backwards
    # While a was frozen, its in-flight call may still have been open at the server when
    # b began the same run, but no run ever had more than those two calls at once.
    assert set(stub.max_in_flight_per_key.values()) <= {1, 2}
    assert set(runs) == set(ids)


def test_two_workers_share_runs_and_never_step_one_at_once(any_url, stub, tmp_path):
    ids = create_runs(any_url, 6, days=6)
    workers = [
        Worker(any_url, stub, tmp_path / f"{name}.log", "--worker-id", name, "--concurrency", "3")
        for name in ("one", "two")
    ]
    try:
        # A run is marked completed when a worker next plans it and finds its budget
        # spent, a moment after its last day commits: wait for that, not the 36th day.
        wait_for(
            lambda: {r.status for r in snapshot(any_url)[1].values()} == {RunStatus.COMPLETED},
            180,
            "all 6 runs completed",
        )
    finally:
        for w in workers:
            w.signal(signal.SIGTERM)
        for w in workers:
            assert w.wait(timeout=15) == 0
    days, runs = snapshot(any_url)
    assert_whole(days)
    assert committed(any_url) == 36
    assert {r.status for r in runs.values()} == {RunStatus.COMPLETED}
    assert {d.worker for run in days.values() for d in run} == {"one", "two"}
    assert set(stub.max_in_flight_per_key.values()) == {1}, stub.max_in_flight_per_key
    assert len(ids) == len(days)


def test_cli_decisions_and_pause_reach_a_running_service(any_url, tmp_path):
    (run_id,) = create_runs(
        any_url, 1, days=50, every_days=4, spot_check_probability=0.0, adaptive=False
    )
    stub = StubOpenAI(latency=0.3).__enter__()
    worker = Worker(any_url, stub, tmp_path / "w.log")
    env = {**os.environ, "LOOPSIM_DATABASE_URL": any_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "loopsim", *args], env=env, capture_output=True, text=True
        )

    def status() -> str:
        return snapshot(any_url)[1][run_id].status

    try:
        wait_for(lambda: status() == RunStatus.AWAITING_CHECKIN, 60, "the first check-in")
        listed = json.loads(cli("checkin", "list", "--pending", "--json").stdout)
        first = committed(any_url)
        # From here each day takes 4 s, so the pause below lands long before the next
        # check-in (three days away) however slowly the CLI starts on a busy machine.
        stub.latency = 4.0
        decided = cli("checkin", "decide", str(listed[0]["id"]), "--approve")
        assert decided.returncode == 0, decided.stderr
        wait_for(lambda: committed(any_url) > first, 120, "a day after approval")
        paused = cli("run", "pause", run_id)
        assert paused.returncode == 0, paused.stderr
        # The day in flight may finish; then the worker lets the run go.
        wait_for(lambda: snapshot(any_url)[1][run_id].lease_owner is None, 120, "the release")
        frozen = committed(any_url)
        stub.latency = 0.05
        time.sleep(2.0)
        assert committed(any_url) == frozen  # paused at a day boundary: nothing more
        shown = json.loads(cli("run", "list", "--json").stdout)
        assert shown[0]["worker"] is None
        assert shown[0]["status"] == "paused"
        assert cli("run", "resume", run_id).returncode == 0
        wait_for(lambda: committed(any_url) > frozen, 120, "the resumed run")
        shown = json.loads(cli("run", "list", "--json").stdout)
        assert shown[0]["worker"] is not None or shown[0]["status"] != "running"
        assert cli("run", "halt", run_id).returncode == 0
        # Once the worker has let go, the day it had in flight cannot have changed that.
        wait_for(lambda: snapshot(any_url)[1][run_id].lease_owner is None, 120, "the release")
        assert status() == RunStatus.HALTED
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(timeout=15)
        stub.stop()
    assert "database is locked" not in (tmp_path / "w.log").read_text()
    assert_whole(snapshot(any_url)[0])


def test_runs_beyond_concurrency_take_turns(any_url, stub, tmp_path):
    """Issue 18: with more running runs than slots, every run gets days, not the same
    four forever: a run held for --yield-after-days days gives its slot up at a day
    boundary while others wait, and the run that waited longest is claimed next."""
    ids = create_runs(any_url, 8, days=10_000)
    worker = Worker(any_url, stub, tmp_path / "w.log", "--concurrency", "4")
    try:
        wait_for(
            lambda: set(snapshot(any_url)[0]) == set(ids), 120, "a committed day for all 8 runs"
        )
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(timeout=15)
    days, _ = snapshot(any_url)
    assert_whole(days)
    assert all(any(d.status == DayStatus.COMMITTED for d in days[i]) for i in ids)
    assert worker.logged("run.yielded")
