"""Issue 18 items 3 to 5, as a user meets them: two real `loopsim serve` processes on one
database, each with a model server of its own (so every call is counted per worker and
per run), frozen in turn with SIGSTOP for longer than a lease.

Each round freezes the worker that holds runs and checks, by events and with generous
deadlines, that the other takes its runs over and keeps committing, and that once
resumed the frozen worker makes no model call and commits no day for a run it lost. A
freeze that lands while the worker holds the database's write lock (SQLite) or an open
transaction (PostgreSQL) is the residual case: nobody can take over until it is resumed;
then the other worker must report that it cannot write and go on afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from loopsim.record.db import normalize_url, sqlite_path
from loopsim.schemas import DayStatus
from loopsim.testing.stubserver import StubOpenAI
from tests.test_serve_process import (
    Worker,
    agenda_key,
    assert_whole,
    create_runs,
    in_transaction,
    snapshot,
    wait_for,
)

LEASE = 2.0
ROUNDS = int(os.environ.get("LOOPSIM_FREEZE_ROUNDS", "3"))


class Named(Worker):
    def __init__(self, name: str, url: str, stub: StubOpenAI, tmp_path, *args: str) -> None:
        self.name, self.stub = name, stub
        super().__init__(
            url,
            stub,
            tmp_path / f"{name}.log",
            "--worker-id",
            name,
            "--lease-seconds",
            str(LEASE),
            "--concurrency",
            "3",
            "--yield-after-days",
            "0",
            "--http",
            "127.0.0.1:0",
            *args,
        )

    def count(self, event: str) -> int:
        return sum(e.get("event") == event for e in self.events())

    def healthz(self) -> dict:
        (address,) = [e["address"] for e in self.events() if e.get("event") == "http.listening"]
        reply = httpx.get(address + "/healthz", timeout=30)
        return {"code": reply.status_code, **reply.json()}

    def calls(self) -> Counter[str]:
        return Counter(agenda_key(body) for body in list(self.stub.requests))


def owners(url: str) -> dict[str, tuple[str | None, int]]:
    _, runs = snapshot(url)
    return {r.id: (r.lease_owner, r.lease_generation or 0) for r in runs.values()}


def days_of(url: str, worker: str) -> Counter[str]:
    days, _ = snapshot(url)
    return Counter(
        d.run_id
        for run in days.values()
        for d in run
        if d.worker == worker and d.status == DayStatus.COMMITTED
    )


def committed_by(url: str, worker: str) -> int:
    return sum(days_of(url, worker).values())


def total(url: str) -> int:
    return committed_by(url, "a") + committed_by(url, "b")


@pytest.fixture
def workers(any_url: str, tmp_path) -> Iterator[tuple[Named, Named]]:
    with ExitStack() as stack:
        stubs = [stack.enter_context(StubOpenAI(latency=0.5, key_fn=agenda_key)) for _ in "ab"]
        pair = (
            Named("a", any_url, stubs[0], tmp_path),
            Named("b", any_url, stubs[1], tmp_path),
        )
        try:
            yield pair
        finally:
            for w in pair:
                w.signal(signal.SIGCONT)
                w.signal(signal.SIGTERM)
            for w in pair:
                try:
                    w.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    w.kill()


def freeze(url: str, frozen: Named, awake: Named, key: dict[str, str]) -> bool:
    """One round of the storm: freeze ``frozen`` for three leases. True if ``awake`` took
    its runs over; False if the freeze held a transaction open, so nobody could."""
    held = {r: gen for r, (owner, gen) in owners(url).items() if owner == frozen.name}
    assert held, "the worker to freeze holds no run"
    # Freeze it across its model calls, where a worker spends most of its time: while
    # every run it holds has a request out at the model server. (A freeze landing in
    # the moment between a request's lease check and its send lets that one request out
    # on waking; no check can be atomic with a send. docs/service.md says so.)
    wait_for(lambda: all(frozen.stub.in_flight(key[r]) for r in held), 60, "calls in flight")
    frozen.signal(signal.SIGSTOP)
    stopped = time.monotonic()
    time.sleep(0.5)  # the requests in flight were counted on arrival, before the stop
    calls, days = frozen.calls(), days_of(url, frozen.name)
    n0 = len(frozen.stub.requests)
    lost, awake_days = frozen.count("lease.lost"), committed_by(url, awake.name)

    def took_over() -> bool:
        now = owners(url)
        return all(now[r][0] == awake.name and now[r][1] > g for r, g in held.items()) and (
            committed_by(url, awake.name) >= awake_days + 2
        )

    while not took_over():
        assert time.monotonic() < stopped + 90, "no takeover"
        if time.monotonic() > stopped + 4 * LEASE and in_transaction(url):
            # Frozen inside a write transaction: nobody can take over. The awake worker
            # says so (on SQLite it cannot write at all) and goes on once it resumes.
            if sqlite_path(normalize_url(url)) is not None:
                wait_for(lambda: awake.healthz()["status"] == "degraded", 60, "/healthz")
            before = total(url)
            frozen.signal(signal.SIGCONT)
            wait_for(lambda n=before: total(url) >= n + 2, 120, "days after the freeze")
            return False
        time.sleep(0.2)
    time.sleep(max(0.0, stopped + 3 * LEASE - time.monotonic()))
    frozen.signal(signal.SIGCONT)
    resumed = time.monotonic()
    wait_for(lambda: frozen.count("lease.lost") >= lost + len(held), 120, "the woken worker")
    time.sleep(1.0)  # anything it would still send has had time to arrive
    after, days_after = frozen.calls(), days_of(url, frozen.name)
    # For the failure message: what it sent after the stop (run, seconds after the stop,
    # whether it repeats a request sent before: an endpoint retry).
    extra = [
        (
            agenda_key(frozen.stub.requests[i]),
            round(frozen.stub.arrivals[i] - stopped, 3),
            frozen.stub.requests[i] in frozen.stub.requests[:n0],
        )
        for i in range(n0, len(frozen.stub.requests))
    ]
    assert {r: after[key[r]] - calls[key[r]] for r in held} == dict.fromkeys(held, 0), (
        extra,
        resumed - stopped,
    )
    assert {r: days_after[r] - days[r] for r in held} == dict.fromkeys(held, 0)
    wait_for(lambda: committed_by(url, awake.name) >= awake_days + 4, 120, "more days")
    return True


def test_a_freeze_storm_costs_no_call_and_no_commit_on_a_lost_lease(any_url, workers):
    ids = create_runs(any_url, 3, days=10_000)
    key = {run_id: f"Study number {i} of the bees." for i, run_id in enumerate(ids)}
    a, b = workers
    wait_for(lambda: total(any_url) >= 3, 120, "the first days")
    taken_over = 0
    for round_ in range(ROUNDS):
        frozen, awake = (a, b) if round_ % 2 == 0 else (b, a)
        if frozen.name not in {owner for owner, _ in owners(any_url).values()}:
            frozen, awake = awake, frozen
        taken_over += freeze(any_url, frozen, awake, key)
    assert taken_over >= 1, f"every one of {ROUNDS} freezes held a transaction open"
    all_days, _ = snapshot(any_url)
    assert_whole(all_days)  # generations never go backwards
    for w in workers:  # no run given up for a busy database
        assert w.count("run.error") == 0


def test_a_frozen_lock_holder_makes_healthz_say_so_and_costs_no_run(sqlite_url, tmp_path):
    """The residual case on purpose: a process that took SQLite's write lock and was
    frozen. Nobody can write until it resumes; the worker says so on /healthz, keeps
    its leases (it renews them once it can: nobody could take them over either), and
    goes on."""
    ids = create_runs(sqlite_url, 2, days=10_000)
    holder_code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.readline()\n"
        "c.execute('ROLLBACK')\n"
    )
    with StubOpenAI(latency=0.15, key_fn=agenda_key) as stub:
        w = Named("w", sqlite_url, stub, tmp_path)
        holder = None
        try:
            wait_for(lambda: min(days_of(sqlite_url, "w")[r] for r in ids) >= 2, 120, "days")
            before = owners(sqlite_url)
            holder = subprocess.Popen(
                [sys.executable, "-c", holder_code, sqlite_url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert holder.stdout is not None
            assert holder.stdout.readline() == "locked\n"
            holder.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            wait_for(lambda: w.healthz()["status"] == "degraded", 60, "/healthz to say so")
            health = w.healthz()
            frozen = days_of(sqlite_url, "w")
            time.sleep(max(0.0, stopped + 3 * LEASE - time.monotonic()))
            holder.send_signal(signal.SIGCONT)
            assert holder.stdin is not None
            holder.stdin.close()
            assert holder.wait(timeout=60) == 0
            wait_for(
                lambda: all(days_of(sqlite_url, "w")[r] >= frozen[r] + 2 for r in ids),
                120,
                "days after the freeze",
            )
            wait_for(lambda: w.healthz()["status"] == "ok", 60, "/healthz to recover")
        finally:
            if holder is not None and holder.poll() is None:
                holder.send_signal(signal.SIGCONT)
                holder.kill()
                holder.wait()
            w.signal(signal.SIGTERM)
            w.wait(timeout=60)
    assert health["code"] == 503
    assert health["reason"].startswith("writes blocked for "), health
    assert owners(sqlite_url) == {r: (None, g) for r, (_, g) in before.items()}
    assert w.count("lease.lost") == 0
    assert w.count("run.error") == 0
    assert_whole(snapshot(sqlite_url)[0])
