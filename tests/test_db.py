"""Connection habits: BEGIN IMMEDIATE writes, and a stuck lock named, not leaked."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from loopsim.errors import DatabaseBusy
from loopsim.record.db import Database
from loopsim.record.store import Store
from tests.conftest import make_run


def test_concurrent_read_then_write_transactions_wait_instead_of_failing(sqlite_url, spec):
    """Under pysqlite's default deferred BEGIN, the second of two read-then-write
    transactions fails at once with "database is locked"; with BEGIN IMMEDIATE it waits."""
    database = Database.open(sqlite_url)
    run_id = make_run(database, spec)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(10):
                with database.write() as session:
                    store = Store(session)
                    run = store.get_run(run_id)  # read ...
                    time.sleep(0.005)
                    store.set_status(run, run.status, f"touched by {threading.get_ident()}")
        except BaseException as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    database.dispose()


def test_a_lock_held_past_the_timeout_is_a_one_line_busy_error(sqlite_url, spec):
    database = Database.open(sqlite_url, busy_timeout_ms=200)
    run_id = make_run(database, spec)
    holder = sqlite3.connect(sqlite_url, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseBusy, match="stayed locked"), database.write() as session:
            Store(session).get_run(run_id)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with database.read() as session:  # readers are never blocked by a writer under WAL
        assert Store(session).get_run(run_id).id == run_id
    database.dispose()


@pytest.mark.postgres
def test_a_service_worth_of_threads_reuses_its_postgresql_connections(pg_url):
    """`loopsim serve` runs up to 9 transactions at once (its database threads and the
    event loop). A connection past the pool's size is closed when given back, and
    PostgreSQL starts a new backend process for the next one: the pool must hold them
    all, so that rounds of 9 at once keep meeting the same backends."""
    database = Database.open(pg_url)
    threads = 9
    seen: set[int] = set()
    lock = threading.Lock()
    barrier = threading.Barrier(threads, timeout=120)

    def hold_one() -> None:
        with database.read() as session:
            pid = int(session.scalar(sa.text("SELECT pg_backend_pid()")))
            barrier.wait()  # all 9 hold a connection at the same moment
        with lock:
            seen.add(pid)

    try:
        for _ in range(10):
            workers = [threading.Thread(target=hold_one) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
    finally:
        database.dispose()
    # Ten rounds of 9 connections at once: 9 backends if the pool keeps them all; a pool
    # of 5 would have started 4 new ones a round (41 or more).
    assert len(seen) <= threads, len(seen)
