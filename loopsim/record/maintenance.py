"""Keeping the only copy of a record safe: ``db check`` and ``db backup``.

:func:`check` looks at a database the way a careful user would before trusting it:
SQLite's own integrity check (or its quick check), its foreign-key check, and a
recomputation of every run's hash chain. It writes nothing to a damaged file; on a sound
one it records when it looked, for ``db status``.

:func:`backup` copies a live SQLite database through SQLite's online backup API, in one
read transaction, so the copy is the database as it stood at one moment even while
``loopsim serve`` writes to it. The copy is checked like :func:`check` before it takes
its name, and it is one self-contained file (rollback journal, no ``-wal``).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import exc

from loopsim import __version__
from loopsim.errors import (
    DatabaseCorrupt,
    DatabaseError,
    DatabaseMissing,
    DatabaseReadOnly,
    SpecError,
)
from loopsim.record import db as dbmod
from loopsim.record.chain import emptied_text
from loopsim.record.sqlite_file import frozen, readonly, translate, truncation
from loopsim.record.store import Store
from loopsim.text import names_a_folder

# Problems SQLite's integrity check lists at most; past that, one more line says so.
MAX_PROBLEMS = 100


@dataclass
class CheckReport:
    where: str
    quick: bool
    problems: list[str] = field(default_factory=list)
    runs: int = 0
    entries: int = 0
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)
    recorded: bool = False
    # Keyed runs this check could not verify: it was given no LOOPSIM_CHAIN_KEY.
    keyed_unverified: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def sqlite_problems(path: Path, *, quick: bool = False) -> list[str]:
    """What SQLite finds wrong with the file, one line each: its integrity check (or
    quick check), a file shorter than its pages, and rows whose foreign key has no
    parent. Read-only, through SQLite alone."""
    pragma = "quick_check" if quick else "integrity_check"
    try:
        conn = readonly(path)
        try:
            conn.execute("BEGIN")
            found = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}({MAX_PROBLEMS})")]
            problems = [] if found == ["ok"] else [f"sqlite {pragma}: {line}" for line in found]
            cut = truncation(conn, path)
            if cut is not None:
                problems.append(f"sqlite: {cut}")
            if not problems:
                for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
                    problems.append(f"foreign key: {table} row {rowid} has no row in {parent}")
        finally:
            conn.close()
    except sqlite3.Error as error:
        text = str(error).lower()
        if "file is not a database" in text:
            return ["sqlite: not a SQLite file"]
        if "unable to open" in text or "locked" in text:  # not the file's fault: say why
            raise translate(error, str(path)) or DatabaseError(f"cannot read {path}") from None
        return [f"sqlite: {text}"]
    except OSError as error:
        raise DatabaseError(f"cannot read {path}: {error.strerror}") from None
    return problems


def check(
    url_or_path: str,
    *,
    quick: bool = False,
    busy_timeout_ms: int = 30_000,
    on_run: Callable[[int, int], None] | None = None,
    record: bool = True,
    chain_key: bytes | None = None,
) -> CheckReport:
    """Check a database; ``on_run(done, total)`` follows the chain checks. Keyed chains
    are verified with ``chain_key``; without it they are listed as not verified, which
    is no problem found."""
    url = dbmod.normalize_url(url_or_path)
    where = dbmod.display_url(url)
    path = dbmod.sqlite_path(url)
    report = CheckReport(where, quick)
    if path is not None:
        if not path.exists():
            raise DatabaseMissing(f"no database at {where}")
        report.problems += sqlite_problems(path, quick=quick)
        if report.problems:
            return report  # nothing more is read from, or written to, a damaged file
    database = dbmod.Database.open(
        url_or_path, busy_timeout_ms=busy_timeout_ms, chain_key=chain_key
    )
    try:
        with database.read() as session:
            store = Store(session)
            run_ids = [run.id for run in store.list_runs()]
            for done, run_id in enumerate(run_ids, 1):
                try:
                    verified = store.verify_chain(run_id)
                except exc.DBAPIError as error:  # a row SQLite cannot read: a problem found
                    report.problems.append(f"run {run_id}: {translate(error, where) or error}")
                    continue
                report.entries += verified.checked
                if verified.needs_key:
                    report.keyed_unverified.append(run_id)
                elif verified.broken is not None:
                    report.problems.append(f"run {run_id}: {verified.broken.describe()}")
                elif (emptied := store.emptied_day(run_id)) is not None:
                    report.problems.append(f"run {run_id}: {emptied_text(emptied)}")
                else:
                    report.heads[run_id] = (verified.checked, verified.head)
                if on_run is not None:
                    on_run(done, len(run_ids))
        report.runs = len(run_ids)
        # A file in a folder nothing can write to is checked, and the check not recorded.
        if record and not (path is not None and frozen(path)):
            try:
                with database.write() as session:
                    Store(session).record_integrity_check(
                        quick=quick,
                        problems=len(report.problems),
                        runs=report.runs,
                        entries=report.entries,
                        version=__version__,
                    )
                report.recorded = True
            except DatabaseReadOnly:  # a read-only file (or user) in a writable folder
                pass
    finally:
        database.dispose()
    return report


@dataclass
class BackupResult:
    source: str
    target: Path
    bytes: int
    seconds: float
    report: CheckReport


def backup(
    url_or_path: str,
    given: str | Path,
    *,
    force: bool = False,
    busy_timeout_ms: int = 30_000,
    chain_key: bytes | None = None,
) -> BackupResult:
    """Copy a live SQLite database to ``given``, checked before it takes that name (best
    the text as typed: a ``Path`` drops the trailing ``/`` of a folder's name)."""
    if names_a_folder(given):
        raise SpecError(
            f"backup {given}: names a folder (it ends in {given[-1]}); give a file name"
        )
    target = Path(given)
    url = dbmod.normalize_url(url_or_path)
    where = dbmod.display_url(url)
    path = dbmod.sqlite_path(url)
    if path is None:
        raise SpecError(
            "db backup copies SQLite files; back up PostgreSQL with pg_dump (see docs/service.md)"
        )
    dbmod.refuse_database_target(target, url_or_path, "backup")
    if target.exists() and not target.is_file():
        raise SpecError(f"backup {target}: not a regular file")
    if target.exists() and not force:
        raise SpecError(f"backup {target} exists; give --force to replace it")
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise SpecError(f"backup {target}: folder {directory} does not exist")
    # The schema gate: refuse a damaged, foreign or outdated source with its own line.
    source = dbmod.Database.open(url_or_path, busy_timeout_ms=busy_timeout_ms)
    source.dispose()
    started = time.monotonic()
    tmp = directory / f".{target.name}.{secrets.token_hex(4)}.partial"
    try:
        _copy(path, tmp, where)
        report = check(str(tmp), busy_timeout_ms=busy_timeout_ms, record=False, chain_key=chain_key)
        if not report.ok:
            raise DatabaseCorrupt(
                f"the copy of {where} did not check out ({report.problems[0]}); nothing "
                f"was written to {target}; run `loopsim db check` on the source"
            )
        _standalone(tmp)
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(directory)
    except BaseException:
        for leftover in (tmp, *(Path(f"{tmp}{s}") for s in ("-wal", "-shm", "-journal"))):
            leftover.unlink(missing_ok=True)
        raise
    return BackupResult(where, target, target.stat().st_size, time.monotonic() - started, report)


def _copy(path: Path, tmp: Path, where: str) -> None:
    try:
        dbmod.copy_sqlite(path, tmp)
    except sqlite3.Error as error:
        mapped = translate(error, where)
        raise (mapped or DatabaseError(f"cannot back up {where}: {error}")) from None
    except OSError as error:
        raise DatabaseError(f"cannot write {tmp.parent}: {error.strerror}") from None


def _standalone(tmp: Path) -> None:
    """Make the copy one file: checkpoint any -wal and leave WAL mode."""
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode = DELETE").fetchall()
    finally:
        conn.close()


def _fsync(path: Path) -> None:
    # A plain descriptor is safe here: no SQLite connection of this process is open on
    # the copy any more (every one closed above), so closing it drops no lock.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
