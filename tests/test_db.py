"""Connection habits: BEGIN IMMEDIATE writes, and a stuck lock named, not leaked."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

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
