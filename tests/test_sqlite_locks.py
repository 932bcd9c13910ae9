"""Opening a SQLite database again in the same process never drops the locks its live
connections hold. POSIX locks belong to the process: closing any plain file descriptor
on the file releases all of them, and another process may then checkpoint and delete the
``-wal`` and ``-shm`` files under a live connection, which corrupts the database. The
locks are checked from another process, the way SQLite itself sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from loopsim.errors import SchemaOutdated
from loopsim.record import db as dbmod
from tests.conftest import make_run

# Run in a separate process that holds no connection of its own until the end: who holds
# a read lock on SQLite's shared-lock bytes of the file (F_GETLK), and whether a SQLite
# connection that opens, reads and closes the file finds it may delete the -wal file
# (it does so only when it believes it is the last connection anywhere).
CHECKER = r"""
import fcntl, json, os, sqlite3, struct, sys
path = sys.argv[1]
SHARED_FIRST = 0x40000000 + 2  # SQLite's PENDING_BYTE + 2
SHARED_SIZE = 510
fd = os.open(path, os.O_RDONLY)
try:
    query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, SHARED_FIRST, SHARED_SIZE, 0)
    kind, _, _, _, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, query))
finally:
    os.close(fd)
holder = pid if kind == fcntl.F_RDLCK else None
conn = sqlite3.connect(path, timeout=10)
conn.execute("SELECT count(*) FROM runs").fetchone()
conn.close()
print(json.dumps({"holder": holder, "wal_kept": os.path.exists(path + "-wal")}))
"""


def outside_view(path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHECKER, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout)


def test_opening_again_and_closing_keeps_the_first_connections_locks(sqlite_url, spec, cli_factory):
    path = Path(sqlite_url)
    first = dbmod.Database.open(sqlite_url)
    try:
        make_run(first, spec)  # the -wal file now holds frames
        with first.read() as session:  # and a read transaction stays open below
            assert session.execute(text("SELECT count(*) FROM runs")).scalar_one() == 1
            assert outside_view(path) == {"holder": os.getpid(), "wal_kept": True}

            # Every way this process opens the file again, each closed again after.
            second = dbmod.Database.open(sqlite_url)
            with second.read() as other:
                other.execute(text("SELECT count(*) FROM days")).all()
            second.dispose()
            other_timeout = dbmod.Database.open(sqlite_url, busy_timeout_ms=1234)
            make_run(other_timeout, spec)
            other_timeout.dispose()
            assert dbmod.upgrade(sqlite_url).backup is None  # at head: checks, changes nothing
            assert cli_factory(sqlite_url)("run", "list", "--json").exit_code == 0

            assert outside_view(path) == {"holder": os.getpid(), "wal_kept": True}
            assert session.execute(text("SELECT count(*) FROM runs")).scalar_one() == 1
        make_run(first, spec)
        with first.read() as session:
            assert session.execute(text("SELECT count(*) FROM runs")).scalar_one() == 3
    finally:
        first.dispose()
    with dbmod.Database.open(sqlite_url).read() as session:
        assert session.execute(text("PRAGMA integrity_check")).scalar_one() == "ok"


def test_the_outside_view_sees_a_plain_file_open_drop_the_locks(sqlite_url, spec):
    """The control: the check above can fail. One plain open and close of the file in
    this process, and another process may delete the -wal under a live connection."""
    path = Path(sqlite_url)
    database = dbmod.Database.open(sqlite_url)
    try:
        make_run(database, spec)
        with database.read() as session:
            session.execute(text("SELECT count(*) FROM runs")).all()
            assert outside_view(path)["holder"] == os.getpid()
            with path.open("rb") as handle:
                handle.read(100)
            assert outside_view(path) == {"holder": None, "wal_kept": False}
    finally:
        database.dispose()


def test_a_process_keeps_one_database_per_file(sqlite_url, tmp_path):
    first = dbmod.Database.open(sqlite_url)
    again = dbmod.Database.open(str(Path(sqlite_url).parent / "." / Path(sqlite_url).name))
    assert again is first
    again.dispose()
    with first.read() as session:  # still open for the first opener
        session.execute(text("SELECT 1")).all()
    other = dbmod.Database.open(sqlite_url, busy_timeout_ms=500)
    assert other is not first
    other.dispose()
    first.dispose()
    reopened = dbmod.Database.open(sqlite_url)
    try:
        assert reopened is not first
    finally:
        reopened.dispose()


def test_a_shared_database_still_checks_the_schema_on_every_open(sqlite_url):
    held = dbmod.Database.open(sqlite_url)
    try:
        dbmod.downgrade(sqlite_url, "0004")
        with pytest.raises(SchemaOutdated, match="loopsim db upgrade"):
            dbmod.Database.open(sqlite_url)
    finally:
        held.dispose()


def test_a_postgresql_lock_held_elsewhere_is_waited_for_then_refused(pg_url, cli_factory):
    """On PostgreSQL `run step` waited without end, and without a word, behind another
    transaction's lock; SQLite's busy timeout gives up with one line. The same bound
    (LOOPSIM_BUSY_TIMEOUT_MS) is now PostgreSQL's lock_timeout."""
    import sqlalchemy as sa

    from loopsim.schemas import parse_spec
    from loopsim.testing import scripted_factory
    from tests.conftest import SPEC, make_run

    database = dbmod.Database.open(pg_url)
    run_id = make_run(database, parse_spec(SPEC))
    database.dispose()
    holder = sa.create_engine(pg_url)
    factory, _ = scripted_factory()
    cli = cli_factory(pg_url, factory, busy_timeout_ms=1500)
    try:
        with holder.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            # Without the bound the step would wait for ever: the lock is let go after a
            # minute all the same, and the step then goes through (and the test fails).
            release = threading.Timer(60, _terminate, (pg_url, pid))
            release.start()
            try:
                result = cli("run", "step", run_id)  # held until this returns
            finally:
                release.cancel()
            conn.exec_driver_sql("ROLLBACK")
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ")
        assert "stayed locked by another writer; try again" in line
        stepped = cli("run", "step", run_id)  # the lock gone, the same step goes through
        assert stepped.exit_code == 0, stepped.output
        assert "day 1 " in stepped.stderr
    finally:
        holder.dispose()


def _terminate(url: str, pid: int) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(url)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    admin.dispose()
