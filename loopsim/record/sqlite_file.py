"""Errors and SQLite files, read without loopsim's engine: driver errors mapped to loopsim's
own, and an existing file's schema revision read through a read-only SQLite connection
before anything opens it for writing (see :mod:`loopsim.record.db`)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import exc

from loopsim.errors import DatabaseBusy, DatabaseCorrupt, DatabaseError, DatabaseReadOnly


def translate(error: Exception, where: str) -> DatabaseError | None:
    """Map a driver error to loopsim's tree, or None if it is not one we know."""
    said = str(getattr(error, "orig", error))
    text = said.lower()
    if "database is locked" in text or "table is locked" in text or "lock timeout" in text:
        return DatabaseBusy(f"{where}: the database stayed locked by another writer; try again")
    if "readonly database" in text or "read-only" in text:
        return DatabaseReadOnly(f"{where} is read-only here; nothing was written")
    if any(
        sign in text
        for sign in ("file is not a database", "malformed", "disk image", "vtable constructor")
    ):
        return DatabaseCorrupt(
            f"{where} is not a readable loopsim database ({text.strip()}); it was left untouched"
        )
    if "database or disk is full" in text:
        return DatabaseError(
            f"{where}: no space left on its disk (database or disk is full); nothing of "
            "this write was committed: free some space, then try again"
        )
    if "disk i/o error" in text:
        return DatabaseError(
            f"{where}: disk I/O error (is its disk full, or failing?); nothing was written"
        )
    if "could not decode to utf-8" in text:
        return DatabaseCorrupt(
            f"{where} holds text that is not UTF-8 ({said.strip().splitlines()[0][:120]}): "
            "it was damaged, or written by another program; it was left untouched"
        )
    if "unable to open" in text:
        return DatabaseError(
            f"cannot open {where}: {text.strip().splitlines()[0]} (SQLite needs to write "
            "its -wal and -shm files beside the database: is the folder read-only?)"
        )
    if any(sign in text for sign in _CANNOT_CONNECT):
        said = str(getattr(error, "orig", error)).strip().splitlines()[0]
        said = said.rpartition("FATAL:")[2].strip() or said  # the server's own reason
        hint = ""
        if "database" in said and "does not exist" in said:
            hint = "; create it (CREATE DATABASE), then `loopsim db upgrade`"
        return DatabaseError(f"cannot connect to {where}: {' '.join(said.split())}{hint}")
    return None


# How a PostgreSQL driver says it never got a session: refused, unknown host, unknown
# database or role, a password it would not take.
_CANNOT_CONNECT = (
    "could not connect",
    "connection refused",
    "connection failed",
    "failed to resolve host",
    "could not translate host name",
    "password authentication failed",
    "no password supplied",
)


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    try:
        yield
    except exc.DBAPIError as error:
        mapped = translate(error, where)
        if mapped is None:
            raise
        raise mapped from error


def refuse(where: str, why: str) -> DatabaseCorrupt:
    return DatabaseCorrupt(
        f"{where} is not a readable loopsim database ({why}); it was left untouched"
    )


def readonly(path: Path) -> sqlite3.Connection:
    """A read-only SQLite connection to ``path``.

    The database file is only ever opened through SQLite. POSIX locks belong to the
    process, so closing any plain file descriptor on the file would drop the locks of
    every SQLite connection this process holds on it, and another process could then
    checkpoint and delete the ``-wal`` and ``-shm`` files under a live connection
    ("How To Corrupt An SQLite Database File", section 2.2). SQLite's own connections
    share one lock table per file within a process, so opening and closing this one is
    safe."""
    return sqlite3.connect(read_only_uri(path), uri=True, timeout=30)


def frozen(path: Path) -> bool:
    """Whether ``path`` must be read as an immutable file: its folder cannot be written
    (a read-only mount, an archive share), so SQLite cannot make the ``-shm`` file every
    WAL reader needs and opens nothing; and nothing else has it open (no ``-shm`` file)
    or holds changes in a ``-wal`` file that a read of the file alone would miss."""
    if os.access(path.parent, os.W_OK):
        return False
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    return not shm.exists() and not (wal.exists() and wal.stat().st_size > 0)


def read_only_uri(path: Path) -> str:
    """The URI that opens ``path`` for reading only: immutable where it is frozen."""
    immutable = "&immutable=1" if frozen(path) else ""
    return f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro{immutable}"


def truncation(conn: sqlite3.Connection, path: Path) -> str | None:
    """Why the file is shorter than the pages SQLite sees, or None. Call inside a read
    transaction: while it lasts, no checkpoint can move the file under the comparison.
    Skipped while the ``-wal`` file holds frames, whose pages the file may not have yet."""
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return None
    size = path.stat().st_size
    if size < pages * page_size:
        return f"truncated: {size} of {pages * page_size} bytes"
    return None


def sqlite_revision(path: Path, where: str) -> str | None:
    """The loopsim revision of an existing SQLite file, read through SQLite without
    writing to it; None for an empty database. Refuse a file that is not a whole SQLite
    database, or one holding some other program's tables."""
    try:
        conn = readonly(path)
        try:
            conn.execute("BEGIN")
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master "
                    "WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
                )
            }
            problem = truncation(conn, path)
            rows = (
                conn.execute("SELECT version_num FROM alembic_version").fetchall()
                if "alembic_version" in tables and problem is None
                else []
            )
        finally:
            conn.close()
    except sqlite3.Error as error:
        text = str(error).lower()
        if "file is not a database" in text:
            raise refuse(where, "not a SQLite file") from None
        mapped = translate(error, where)
        raise (mapped or refuse(where, text)) from None
    except OSError as error:
        raise DatabaseError(f"cannot read {where}: {error.strerror}") from None
    if problem is not None:
        raise refuse(where, problem)
    if len(rows) > 1:
        raise refuse(where, "more than one schema revision")
    if not rows and tables - {"alembic_version"}:
        raise refuse(where, "a SQLite database holding another program's tables")
    return str(rows[0][0]) if rows else None
