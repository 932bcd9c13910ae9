"""Issue 18 item 4: a worker that cannot write says so on /healthz, and a writer frozen
while it holds SQLite's write lock costs the other workers a wait, not their runs.

The lock holder here is a real second SQLite connection that began ``BEGIN IMMEDIATE``
and does nothing, which is all a frozen process holding the lock is to SQLite. The
process-level storm (two real `loopsim serve` processes, SIGSTOP) is in
tests/test_serve_freeze.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import select

from loopsim.config import Settings
from loopsim.errors import DatabaseBusy, LeaseLost
from loopsim.record import db as dbmod
from loopsim.record import leases
from loopsim.record.tables import Day, Run
from loopsim.schemas import DayStatus
from loopsim.service.health import WriteHealth, report
from loopsim.service.worker import Service
from loopsim.testing import scripted_factory
from tests.test_service import config, start_runs

TTL = dt.timedelta(seconds=30)


@contextmanager
def write_lock(path: str) -> Iterator[None]:
    """Hold the file's write lock, as a process frozen inside a write transaction does."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.fixture
def impatient(sqlite_url: str) -> Iterator[dbmod.Database]:
    """The database with a short busy timeout, so a blocked write gives up quickly."""
    database = dbmod.Database.open(sqlite_url, busy_timeout_ms=300)
    yield database
    database.dispose()


def test_a_worker_with_free_slots_and_nothing_to_claim_takes_no_write_lock(impatient, sqlite_url):
    # Polled every second by every worker with a free slot: on SQLite each claim that
    # began a write transaction took the one write lock, for nothing.
    with write_lock(sqlite_url):
        assert leases.claim(impatient, "w", TTL, 4) == []


def test_a_claim_with_something_to_claim_still_waits_for_the_lock(impatient, sqlite_url, spec):
    (run_id,) = start_runs(impatient, 1)
    with write_lock(sqlite_url), pytest.raises(DatabaseBusy):
        leases.claim(impatient, "w", TTL, 4)
    assert [lease.run_id for lease in leases.claim(impatient, "w", TTL, 4)] == [run_id]


def test_an_expired_lease_nobody_claimed_is_renewed_and_a_taken_one_is_not(any_db):
    mine, taken = start_runs(any_db, 2)
    held = {lease.run_id: lease for lease in leases.claim(any_db, "w", TTL, 2)}
    with any_db.write() as session:
        for run in session.scalars(select(Run)):
            run.lease_expires_at = run.lease_expires_at - dt.timedelta(hours=1)
    (usurped,) = leases.claim(any_db, "other", TTL, 1, exclude=[mine])
    assert usurped.run_id == taken
    # "w" could not renew for an hour (frozen, or locked out); nobody claimed `mine`.
    assert leases.renew(any_db, held.values(), TTL) == [held[taken]]
    leases.check(any_db, held[mine])
    with pytest.raises(LeaseLost):
        leases.check(any_db, held[taken])


def test_write_health_names_a_blocked_write_and_clears_when_one_commits():
    now = [100.0]
    health = WriteHealth(stall_seconds=5, clock=lambda: now[0])
    assert health.problem() is None
    first = health.began()
    now[0] += 4
    assert health.problem() is None  # a write may take a moment
    now[0] += 8
    assert health.problem() == "writes blocked for 12 s: waiting for the database"
    health.ended(first, DatabaseBusy("x: the database stayed locked"))
    second = health.began()
    now[0] += 3
    assert health.problem() == (
        "writes blocked for 15 s: database is locked (another process holds its write lock)"
    )
    body = report(health, stopping=False, ready=True, worker="w")
    assert body["status"] == "degraded"
    assert body["reason"].startswith("writes blocked for 15 s")
    health.ended(second)
    assert health.problem() is None
    assert report(health, stopping=False, ready=True, worker="w") == {"status": "ok", "worker": "w"}


def test_a_call_that_wrote_nothing_does_not_say_writes_get_through():
    # A worker with free slots polls for runs to claim; finding none, the claim reads only
    # and takes no write lock. It used to clear "blocked", so /healthz flapped to "ok"
    # between two polls while every real write was still locked out.
    now = [100.0]
    health = WriteHealth(stall_seconds=5, clock=lambda: now[0])
    health.ended(health.began(), DatabaseBusy("x: the database stayed locked"))
    now[0] += 7
    health.ended(health.began(), wrote=False)
    assert health.problem() == (
        "writes blocked for 7 s: database is locked (another process holds its write lock)"
    )
    health.ended(health.began())
    assert health.problem() is None


def test_a_worker_locked_out_by_a_frozen_writer_says_so_and_keeps_its_runs(impatient, sqlite_url):
    ids = start_runs(impatient, 2, days=10_000)
    factory, _ = scripted_factory(delay=0.05)
    lease_seconds = 2.0
    service = Service(
        impatient, Settings(), factory, config(lease_seconds=lease_seconds, http_port=0)
    )
    seen: dict[str, object] = {}

    def committed() -> dict[str, int]:
        with impatient.read() as session:
            days = session.scalars(select(Day).where(Day.status == DayStatus.COMMITTED))
            counts = dict.fromkeys(ids, 0)
            for day in days:
                counts[day.run_id] += 1
            return counts

    def generations() -> dict[str, int]:
        with impatient.read() as session:
            return {r.id: r.lease_generation for r in session.scalars(select(Run))}

    async def until(predicate, what: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(predicate):
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    def healthz() -> dict:
        assert service.http is not None
        reply = httpx.get(service.http.address + "/healthz", timeout=30)
        return {"code": reply.status_code, **reply.json()}

    async def scenario() -> None:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        try:
            await until(lambda: min(committed().values()) >= 2, "two days on each run")
            before = generations()
            with write_lock(sqlite_url):
                locked_at = time.monotonic()

                # Keep the very reply that said so: a write that gets through between two
                # lock waits can make the next reply "ok" for a moment.
                def degraded() -> bool:
                    reply = healthz()
                    if reply["status"] != "degraded":
                        return False
                    seen["degraded"] = reply
                    return True

                await until(degraded, "/healthz to say so")
                # Locked out for three leases: nobody could renew, nor take anything over.
                await asyncio.sleep(max(0.0, locked_at + 3 * lease_seconds - time.monotonic()))
                frozen = committed()
            await until(
                lambda: all(committed()[r] >= frozen[r] + 2 for r in ids), "days after the lock"
            )
            await until(lambda: healthz()["status"] == "ok", "/healthz to recover")
            seen["generations"] = (before, generations())
        finally:
            service.request_stop()
            await task

    asyncio.run(scenario())
    degraded = seen["degraded"]
    assert isinstance(degraded, dict)
    assert degraded["code"] == 503
    assert degraded["reason"].startswith("writes blocked for ")
    before, after = seen["generations"]  # type: ignore[misc]
    assert after == before, "the worker lost its leases and had to claim its runs again"
    rendered = service.metrics.render().decode()
    assert "loopsim_leases_lost_total 0.0" in rendered
    assert 'loopsim_days_total{status="failed"} 0.0' in rendered
