"""`loopsim db check` and `loopsim db backup` on real SQLite files (and `db check` on
PostgreSQL), including a backup taken while a real `loopsim serve` process writes."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from loopsim.record import db as dbmod
from loopsim.record.store import EntryInput, Store
from loopsim.testing import add_day
from tests.conftest import make_run
from tests.test_hostile import file_state, one_line_error
from tests.test_serve_process import Worker, committed, create_runs, stub, wait_for  # noqa: F401


def seed(url: str, spec, runs: int = 2, days: int = 3) -> list[str]:
    database = dbmod.Database.open(url)
    try:
        ids = [make_run(database, spec) for _ in range(runs)]
        with database.write() as session:
            store = Store(session)
            for run_id in ids:
                for i in range(1, days + 1):
                    body = f"Foragers measured nectar at patch {i}. " * 30
                    add_day(store, run_id, i, [EntryInput("note", f"Forager note {i}", body)])
        return ids
    finally:
        database.dispose()


def compact(path: Path) -> None:
    """Into the one file, with no free pages (damage to a free page harms nothing)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_check_passes_a_sound_database_and_status_says_when(cli_factory, sqlite_url, spec):
    seed(sqlite_url, spec)
    cli = cli_factory(sqlite_url)
    before = cli("db", "status")
    assert before.exit_code == 0
    assert "last checked: never" in before.stdout
    result = cli("db", "check")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "integrity check ok, foreign keys ok, 2 runs and 6 entries verified" in result.stderr
    status = cli("db", "status")
    assert "(integrity check, ok)" in status.stdout
    quick = cli("db", "check", "--quick", "--json")
    assert quick.exit_code == 0
    data = json.loads(quick.stdout)
    assert data["ok"] is True
    assert data["quick"] is True
    assert data["entries"] == 6
    assert "(quick check, ok)" in cli("db", "status").stdout


@pytest.mark.postgres
def test_a_file_sqlite_cannot_open_is_an_error_not_a_problem_found(
    cli_factory, sqlite_url, spec, monkeypatch
):
    """In a read-only folder SQLite cannot make the -shm file, and says only "unable to
    open database file". db check listed that as a problem of the file ("1 problem
    found"), which reads as damage; it is an error saying why, and the file is as it was.
    (SQLite's refusal is simulated here: a read-only folder needs a mount to make.)"""
    from loopsim.record import maintenance

    seed(sqlite_url, spec)

    def cannot_open(path: Path) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(maintenance, "readonly", cannot_open)
    before = file_state(Path(sqlite_url))
    result = cli_factory(sqlite_url)("db", "check")
    assert result.exit_code == 1
    assert result.stdout == ""
    line = one_line_error(result)
    assert "cannot open" in line
    assert "is the folder read-only?" in line
    assert "problem" not in result.stderr
    assert file_state(Path(sqlite_url)) == before


def test_check_verifies_every_chain_on_postgresql(cli_factory, pg_url, spec):
    ids = seed(pg_url, spec)
    cli = cli_factory(pg_url)
    assert cli("db", "check").exit_code == 0
    assert "(integrity check, ok)" in cli("db", "status").stdout
    database = dbmod.Database.open(pg_url)
    try:
        with database.write() as session:
            session.connection().exec_driver_sql(
                f"UPDATE entries SET body = 'rewritten' WHERE run_id = '{ids[1]}' AND seq = 2"
            )
    finally:
        database.dispose()
    result = cli("db", "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"run {ids[1]}: day 2, seq 2 (entry {_entry_id(pg_url, ids[1], 2)}): content does not "
        "match its hash (edited after commit)"
    ]
    assert "1 problems found" not in result.stderr
    assert "1 problem found" in result.stderr


def _entry_id(url: str, run_id: str, seq: int) -> int:
    database = dbmod.Database.open(url)
    try:
        with database.read() as session:
            return int(
                session.connection()
                .exec_driver_sql(
                    f"SELECT id FROM entries WHERE run_id = '{run_id}' AND seq = {seq}"
                )
                .scalar_one()
            )
    finally:
        database.dispose()


def test_an_edited_entry_is_named_and_the_exit_is_one(cli_factory, sqlite_url, spec):
    ids = seed(sqlite_url, spec)
    with contextlib.closing(sqlite3.connect(sqlite_url)) as conn:
        conn.execute(f"UPDATE entries SET title = 'changed' WHERE run_id = '{ids[0]}' AND seq = 3")
        conn.commit()
    result = cli_factory(sqlite_url)("db", "check")
    assert result.exit_code == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"run {ids[0]}: day 3, seq 3 ")
    assert "content does not match its hash" in line
    assert "(integrity check, 1 problem)" in cli_factory(sqlite_url)("db", "status").stdout


def test_a_row_without_its_parent_is_a_foreign_key_problem(cli_factory, sqlite_url, spec):
    seed(sqlite_url, spec, runs=1)
    with contextlib.closing(sqlite3.connect(sqlite_url)) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(
            "INSERT INTO probes (run_id, question, source, status, created_at) "
            "VALUES ('no-such-run', 'q?', 'human', 'accepted', '2025-06-02 00:00:00')"
        )
        conn.commit()
    result = cli_factory(sqlite_url)("db", "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["foreign key: probes row 1 has no row in runs"]


def test_damage_inside_the_file_is_reported_and_nothing_is_written(cli_factory, sqlite_url, spec):
    """`db status` used to call such a file current. Every page after the first is
    overwritten in turn; `db check` must find each one and leave the file as it was."""
    path = Path(sqlite_url)
    seed(sqlite_url, spec, runs=2, days=8)
    compact(path)
    pristine = path.read_bytes()
    page = int.from_bytes(pristine[16:18], "big")
    pages = len(pristine) // page
    missed = []
    for number in range(1, pages):
        damaged = bytearray(pristine)
        damaged[number * page : (number + 1) * page] = bytes([0xA5]) * page
        path.write_bytes(bytes(damaged))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        before = file_state(path)
        result = cli_factory(sqlite_url)("db", "check", "--quick")
        assert "Traceback" not in result.output
        if result.exit_code != 1 or not result.stdout.strip():
            missed.append(number)
        assert file_state(path)[""] == before[""], number
    assert pages > 10
    assert missed == [], f"pages whose damage went unreported: {missed}"


def test_check_on_a_file_that_is_not_sqlite_is_one_problem(cli_factory, tmp_path):
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    result = cli_factory(str(path))("db", "check")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == ["sqlite: not a SQLite file"]
    assert path.read_bytes() == b"these are my notes, not a database\n" * 200


def test_backup_is_a_checked_standalone_copy(cli_factory, sqlite_url, spec, tmp_path):
    ids = seed(sqlite_url, spec)
    cli = cli_factory(sqlite_url)
    target = tmp_path / "copy.db"
    result = cli("db", "backup", str(target), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["runs"]) == set(ids)
    assert "2 runs, 6 entries verified" in result.stderr
    assert not Path(f"{target}-wal").exists()
    with contextlib.closing(sqlite3.connect(target)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    copied = cli_factory(str(target))("db", "check", "--json")
    assert copied.exit_code == 0
    assert json.loads(copied.stdout)["entries"] == 6
    source = dbmod.Database.open(sqlite_url)
    try:
        with source.read() as session:
            store = Store(session)
            for run_id in ids:
                seq, head = store.chain_head(run_id)
                assert data["runs"][run_id] == {"entries": seq, "head": head}
    finally:
        source.dispose()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_backup_refuses_to_overwrite_without_force(cli_factory, sqlite_url, spec, tmp_path):
    seed(sqlite_url, spec, runs=1)
    target = tmp_path / "keep.db"
    target.write_bytes(b"an earlier backup")
    cli = cli_factory(sqlite_url)
    refused = cli("db", "backup", str(target))
    assert refused.exit_code == 2
    assert "exists; give --force" in one_line_error(refused)
    assert target.read_bytes() == b"an earlier backup"
    assert cli("db", "backup", str(target), "--force").exit_code == 0
    assert cli_factory(str(target))("db", "check").exit_code == 0


def test_backup_to_a_path_naming_a_folder_writes_nothing(cli_factory, sqlite_url, spec, tmp_path):
    """`db backup out/new/` wrote a file named `new` in `out`: the argument was a Path,
    which drops the slash that says the path names a folder."""
    seed(sqlite_url, spec, runs=1)
    (tmp_path / "out").mkdir()
    cli = cli_factory(sqlite_url)
    for given in (f"{tmp_path}/out/new/", f"{tmp_path}/out/"):
        refused = cli("db", "backup", given)
        assert refused.exit_code == 2, refused.output
        assert one_line_error(refused).startswith(f"error: backup {given}")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_no_output_may_be_written_over_the_database(cli_factory, sqlite_url, spec, suffix):
    run_id = seed(sqlite_url, spec, runs=1)[0]
    path = Path(sqlite_url)
    target = Path(f"{path}{suffix}")
    cli = cli_factory(sqlite_url)
    before = path.read_bytes()
    for argv in (
        ("db", "backup", str(target), "--force"),
        ("export", run_id, "-o", str(target)),
        ("export", run_id, "--format", "html", "-o", str(target)),
    ):
        result = cli(*argv)
        assert result.exit_code == 2, (argv, result.output)
        assert "is the database itself" in one_line_error(result)
    assert path.read_bytes() == before
    assert cli("db", "check").exit_code == 0


@pytest.mark.postgres
def test_backup_names_pg_dump_on_postgresql(cli_factory, pg_url, tmp_path):
    result = cli_factory(pg_url)("db", "backup", str(tmp_path / "x.db"))
    assert result.exit_code == 2
    assert "pg_dump" in one_line_error(result)
    assert not (tmp_path / "x.db").exists()


def test_backup_while_serve_writes_is_one_moment_of_the_record(stub, tmp_path):  # noqa: F811
    """The copy checks out, and each of its chains is a prefix of the source's: the
    record as it stood when the copy was made."""
    path = tmp_path / "busy.db"
    dbmod.upgrade(str(path))
    create_runs(str(path), 4, days=400)
    worker = Worker(str(path), stub, tmp_path / "w.log", "--concurrency", "4")
    copies: list[tuple[Path, dict]] = []
    try:
        wait_for(lambda: committed(str(path)) >= 8, 120, "days to commit")
        for n in range(3):
            target = tmp_path / f"copy-{n}.db"
            before = committed(str(path))
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "loopsim",
                    "--db",
                    str(path),
                    "db",
                    "backup",
                    str(target),
                    "--json",
                ],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr
            copies.append((target, json.loads(proc.stdout)["runs"]))
            wait_for(lambda b=before: committed(str(path)) > b, 120, "serve to go on writing")
    finally:
        worker.signal(signal.SIGTERM)
        worker.wait(60)
    sizes = []
    for target, heads in copies:
        checked = subprocess.run(
            [sys.executable, "-m", "loopsim", "--db", str(target), "db", "check", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        sizes.append(sum(head["entries"] for head in heads.values()))
        source = dbmod.Database.open(str(path))
        try:
            with source.read() as session:
                store = Store(session)
                for run_id, head in heads.items():
                    chain = [e.hash for e, _ in store.iter_chain(run_id)]
                    assert len(chain) >= head["entries"]
                    at = chain[head["entries"] - 1] if head["entries"] else None
                    assert head["entries"] == 0 or at == head["head"], run_id
        finally:
            source.dispose()
    assert sizes == sorted(sizes), "the copies should grow"
    assert sizes[-1] > sizes[0], "the copies should grow"


@contextlib.contextmanager
def read_only_mount(source: Path, target: Path):
    """``source`` (a folder or a file) seen read-only at ``target``: a bind mount
    remounted read-only, which even root cannot write through. Skips where mounting is
    not allowed."""
    if source.is_dir():
        target.mkdir()
    else:
        target.touch()
    bound = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"a read-only bind mount needs root: {bound.stderr.decode().strip()}")
    try:
        made = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(target)], capture_output=True, check=False
        )
        if made.returncode != 0:
            pytest.skip(f"cannot remount read-only: {made.stderr.decode().strip()}")
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_a_record_in_a_read_only_folder_is_read_verified_and_checked(cli_factory, spec, tmp_path):
    """An archived record on read-only media (a snapshot, a share): SQLite could open
    nothing there, since a WAL reader must make a -shm file beside the database, so
    every command failed, reads too. It is now read as an immutable file; writes are
    refused in one line, and nothing is written beside it."""
    source = tmp_path / "archive"
    source.mkdir()
    path = source / "record.db"
    dbmod.upgrade(str(path))
    (run_id, _) = seed(str(path), spec)
    assert sorted(p.name for p in source.iterdir()) == ["record.db"]  # closed: no -wal
    with read_only_mount(source, tmp_path / "ro") as folder:
        cli = cli_factory(str(folder / "record.db"))
        listed = cli("run", "list", "--json")
        assert listed.exit_code == 0, listed.output
        assert len(json.loads(listed.stdout)) == 2
        verified = cli("record", "verify", run_id)
        assert verified.exit_code == 0, verified.output
        exported = cli("export", run_id, "--format", "jsonl")
        assert exported.exit_code == 0, exported.output
        assert exported.stdout.count('"type": "entry"') == 3
        checked = cli("db", "check")
        assert checked.exit_code == 0, checked.output
        assert "not recorded" in checked.stderr
        refused = cli("run", "pause", run_id)
        assert refused.exit_code == 1
        assert "is read-only here; nothing was written" in one_line_error(refused)
        # A new database there: one line, not the traceback of its clean-up.
        created = cli_factory(str(folder / "new.db"))("db", "upgrade")
        assert created.exit_code == 1
        assert "is the folder read-only?" in one_line_error(created)
        assert sorted(p.name for p in folder.iterdir()) == ["record.db"]


def test_a_read_only_file_in_a_writable_folder_is_checked_not_refused(cli_factory, spec, tmp_path):
    """A record copied with its permissions, or owned by another user: SQLite opens it
    for reading (the folder takes its -shm file), and `db check` read and verified
    everything, then failed on recording the check: "read-only here; nothing was
    written", exit 1, for a sound record. The check is what was asked; it is reported,
    and only its recording is left out, as in a read-only folder."""
    source = tmp_path / "record.db"
    dbmod.upgrade(str(source))
    (run_id, _) = seed(str(source), spec)
    (tmp_path / "copy").mkdir()
    with read_only_mount(source, tmp_path / "copy" / "record.db") as path:
        cli = cli_factory(str(path))
        checked = cli("db", "check")
        assert checked.exit_code == 0, checked.output
        assert "2 runs and 6 entries verified (read-only here: not recorded" in checked.stderr
        assert cli("record", "verify", run_id).exit_code == 0
        refused = cli("run", "pause", run_id)  # a write is still refused, in one line
        assert refused.exit_code == 1
        assert "is read-only here; nothing was written" in one_line_error(refused)
        assert cli("db", "status").stdout.count("never") == 1  # nothing was recorded


def test_entries_cut_from_the_end_of_a_record_are_found(cli_factory, sqlite_url, spec):
    """A chain verifies every link up to its last entry, so entries deleted from its end
    left `record verify` and `db check` saying ok. Every day that holds an index wrote at
    least one entry: a day left with none is where the record was cut."""
    run_id, other = seed(sqlite_url, spec)  # 3 days of one entry each, per run
    cli = cli_factory(sqlite_url)
    assert cli("record", "verify", run_id).exit_code == 0
    with contextlib.closing(sqlite3.connect(sqlite_url)) as conn, conn:
        conn.execute("DELETE FROM entries WHERE run_id = ? AND seq > 2", (run_id,))
    verified = cli("record", "verify", run_id)
    assert verified.exit_code == 1
    assert one_line_error(verified) == (
        f"error: run {run_id}: day 3 holds no entries: entries were deleted from the "
        "record (its chain still verifies up to where it was cut); restore it from a backup"
    )
    checked = cli("db", "check")
    assert checked.exit_code == 1, checked.output
    assert f"run {run_id}: day 3 holds no entries" in checked.output
    assert f"run {other}:" not in checked.output
    assert cli("record", "verify", other).exit_code == 0


def test_text_sqlite_cannot_decode_is_one_line_and_a_problem_db_check_lists(
    cli_factory, sqlite_url, spec
):
    """A byte that is not UTF-8 in a text column (a damaged page, another program's
    write) ended every reading command, `db check` and `db backup` in a traceback."""
    run_id, other = seed(sqlite_url, spec)
    with contextlib.closing(sqlite3.connect(sqlite_url)) as conn, conn:
        conn.execute(
            "UPDATE entries SET body = CAST(X'48ff6c6c6f' AS TEXT) WHERE run_id = ? AND seq = 2",
            (run_id,),
        )
    cli = cli_factory(sqlite_url)
    for command in (["record", "verify", run_id], ["export", run_id], ["record", "show", run_id]):
        result = cli(*command)
        assert result.exit_code == 1, result.output
        line = one_line_error(result)
        assert "holds text that is not UTF-8" in line, line
        assert line.endswith("it was damaged, or written by another program; it was left untouched")
    checked = cli("db", "check")
    assert checked.exit_code == 1
    assert f"run {run_id}: " in checked.output
    assert "holds text that is not UTF-8" in checked.output
    assert f"run {other}:" not in checked.output  # the other run was read, and is whole
    assert "Traceback" not in checked.output


def test_a_full_disk_while_a_day_commits_is_one_line_and_writes_nothing(sqlite_url, spec):
    """SQLite's 'database or disk is full' at a day's commit was a traceback; the record
    stayed whole (the transaction rolled back), and the message now says so. The disk is
    made full for real: the file may not grow by another page."""
    from sqlalchemy import event

    from loopsim.config import Settings
    from loopsim.errors import DatabaseError
    from loopsim.loop import Loop
    from loopsim.testing import scripted_factory

    (run_id,) = seed(sqlite_url, spec, runs=1, days=1)
    database = dbmod.Database.open(sqlite_url)
    database.engine.dispose()  # connections made from here on get the cap

    @event.listens_for(database.engine, "connect")
    def cap(dbapi_connection, _record):
        pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    factory, _ = scripted_factory()
    loop = Loop(database, Settings(), factory)
    try:

        def step_until_full() -> None:
            for _ in range(50):  # the write-ahead log absorbs the first few pages
                loop.run_days(run_id, 1)

        with pytest.raises(DatabaseError, match="no space left on its disk") as raised:
            step_until_full()
        assert "nothing of this write was committed" in str(raised.value)
    finally:
        event.remove(database.engine, "connect", cap)
        database.engine.dispose()
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        assert [d.index for d in days] == list(range(1, len(days) + 1))
        assert store.verify_chain(run_id).ok
        assert store.emptied_day(run_id) is None
    database.dispose()
