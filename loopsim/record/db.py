"""Engine, sessions, and the schema gate.

What this module promises:

- SQLite connections run in WAL mode with a busy timeout and foreign keys on. Reads begin
  ``DEFERRED``; writes begin ``IMMEDIATE``, so a read-then-write transaction waits for the
  lock instead of failing at once with "database is locked". PostgreSQL's wait for a lock
  is bounded the same (``lock_timeout``), and refused alike once it runs out.
- :meth:`Database.open` refuses a database that is missing, corrupt, or not at Alembic's
  head, and names the command that fixes it. Only :func:`upgrade` creates a database.
- An existing SQLite file is looked at read-only before anything writes to it (even the
  switch to WAL rewrites its header): a file that is not SQLite, is cut short, or holds
  another program's tables is refused by every command, ``db upgrade`` included, and is
  left byte for byte as it was.
- Nothing opens a SQLite file, its ``-wal`` or its ``-shm`` except SQLite itself: closing
  a plain file descriptor would drop every lock the process's connections hold on it.
  A process keeps one :class:`Database` per file.
- :func:`upgrade` backs up an existing SQLite file before migrating it, and on PostgreSQL
  ends with ``ANALYZE`` of the record's tables (:mod:`loopsim.record.planner_stats`).

The caller owns every transaction: :meth:`Database.write` commits once at the end of its
block or rolls back on any exception, so a killed process never leaves half a write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.util
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, exc, inspect, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from loopsim.errors import DatabaseError, DatabaseMissing, SchemaOutdated, SchemaTooNew, SpecError
from loopsim.record import planner_stats
from loopsim.record.chain import CHAIN_KEY_INFO
from loopsim.record.sqlite_file import (
    frozen,
    read_only_uri,
    readonly,
    sqlite_revision,
    translated,
)
from loopsim.record.tables import add_postgresql_options

if TYPE_CHECKING:
    from alembic.config import Config


UPGRADE_HINT = "run `loopsim db upgrade`"

# Alembic's head revision, so that opening a database at the current schema (every
# command) needs no Alembic import, which costs more CPU than the rest of a read command.
# A new migration changes it; tests/test_migrations.py holds it to Alembic's real head.
SCHEMA_HEAD = "0011"


BACKENDS = ("sqlite", "postgresql")


def normalize_url(url_or_path: str) -> URL:
    """Accept a SQLAlchemy URL or a plain file path (taken as SQLite). Refuse what would
    keep nothing or could never open: an empty value, in-memory SQLite, other backends."""
    if not url_or_path.strip():
        raise DatabaseError(
            "no database given: --db (or LOOPSIM_DATABASE_URL) is empty; give a file path or URL"
        )
    if "://" not in url_or_path:
        return _not_a_folder(URL.create("sqlite", database=str(Path(url_or_path).expanduser())))
    try:
        url = make_url(url_or_path)
    except exc.ArgumentError:
        raise DatabaseError(f"not a database URL: {url_or_path!r}") from None
    if url.get_backend_name() not in BACKENDS:
        raise DatabaseError(
            f"{url.drivername}: loopsim keeps records in SQLite (a file path) or PostgreSQL "
            "(postgresql+psycopg://user@host/name)"
        )
    if url.get_backend_name() == "sqlite" and sqlite_path(url) is None:
        raise DatabaseError("an in-memory SQLite database keeps nothing; give a file path")
    return _not_a_folder(url)


def _not_a_folder(url: URL) -> URL:
    """``url``, unless it names a folder where a SQLite file should be (SQLite itself says
    only "disk I/O error")."""
    path = sqlite_path(url)
    if path is not None and path.is_dir():
        raise DatabaseError(
            f"{path} is a folder; give the database file's path, such as {path / 'loopsim.db'}"
        )
    return url


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for other backends and in-memory SQLite."""
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def display_url(url: URL) -> str:
    path = sqlite_path(url)
    return str(path) if path is not None else url.render_as_string(hide_password=True)


def _same_file_as_database(target: Path, database: Path) -> bool:
    """Whether writing ``target`` would replace the database or one of SQLite's files
    beside it (its -wal, -shm or -journal), through any spelling or symlink."""
    resolved = Path(os.path.realpath(target))
    base = Path(os.path.realpath(database))
    siblings = {base, *(Path(f"{base}{suffix}") for suffix in ("-wal", "-shm", "-journal"))}
    if resolved in siblings:
        return True
    with contextlib.suppress(OSError):
        if resolved.exists() and base.exists() and os.path.samefile(resolved, base):
            return True
    return False


def refuse_database_target(target: Path, url_or_path: str, option: str) -> None:
    """Refuse an output path that is the database's own file: writing there would
    replace the record with the output."""
    path = sqlite_path(normalize_url(url_or_path))
    if path is not None and _same_file_as_database(target, path):
        raise SpecError(f"{option} {target} is the database itself; give another file")


def migrations_dir() -> str:
    """Where the Alembic scripts are: the ``loopsim._migrations`` package of an install,
    else the ``migrations`` folder beside the package in a source checkout. The second
    is what a checkout imported from its own root finds (``python -m loopsim`` or pytest
    there, with the strict editable install ``make setup`` makes), since the checkout's
    ``loopsim/`` folder then comes first and has no ``_migrations``."""
    spec = importlib.util.find_spec("loopsim._migrations")
    if spec is not None and spec.submodule_search_locations:
        return str(next(iter(spec.submodule_search_locations)))
    beside = Path(__file__).resolve().parents[2] / "migrations"
    if (beside / "env.py").is_file() and (beside / "versions").is_dir():
        return str(beside)
    raise DatabaseError("loopsim's migrations are missing from this install")


def alembic_config(url: URL | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", migrations_dir())
    if url is not None:
        cfg.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def head_revision() -> str:
    """Alembic's head revision, read from the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def make_engine(url: URL, *, busy_timeout_ms: int = 30_000, foreign_keys: bool = True) -> Engine:
    """Build an engine with loopsim's connection habits for the URL's backend."""
    if url.get_backend_name() == "sqlite":
        # A file keeps a small pool of connections (opening one, with its PRAGMAs, cost
        # a service about 7% of its time); in-memory SQLite gets a fresh one each time.
        pooling: dict[str, Any] = (
            {"poolclass": QueuePool, "pool_size": 8, "max_overflow": 8}
            if sqlite_path(url) is not None
            else {"poolclass": NullPool}
        )
        connect_args = {"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
        path = sqlite_path(url)
        if path is not None and frozen(path):
            # A folder nothing can be written to: read the file as it is; a write is
            # refused as SQLite's "readonly database" (record/sqlite_file.py).
            uri, timeout = read_only_uri(path), busy_timeout_ms / 1000
            pooling["creator"] = lambda: sqlite3.connect(
                uri, uri=True, timeout=timeout, check_same_thread=False
            )
        engine = create_engine(url, connect_args=connect_args, **pooling)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            # pysqlite's own implicit BEGIN is switched off; we emit BEGIN ourselves below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            cur.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
            if sqlite_path(url) is not None:
                cur.execute("PRAGMA journal_mode = WAL")
                cur.execute("PRAGMA synchronous = NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("loopsim_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if url.get_backend_name() == "postgresql":
        add_postgresql_options()
    try:
        # Room for every thread of `loopsim serve` at once (its database pool holds 8): a
        # connection beyond the pool is closed when given back, and PostgreSQL starts a
        # backend process for each new one, which at the default size of 5 a worker did
        # several times a second (benchmarks/README.md, "PostgreSQL's share").
        waits = {"options": f"-c lock_timeout={int(busy_timeout_ms)}"}  # as SQLite's busy
        return create_engine(
            url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args=waits
        )
    except (exc.NoSuchModuleError, ImportError) as error:
        raise DatabaseError(
            f"cannot use {url.drivername}: its driver is not installed ({error}); "
            "loopsim installs psycopg, for postgresql+psycopg://"
        ) from None


def _at_head(engine: Engine, where: str) -> bool:
    """Whether the database's one schema revision is :data:`SCHEMA_HEAD`, read without
    Alembic; anything else is left to :func:`_current_revision` to tell apart."""
    with translated(where), engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
    return [tuple(row) for row in rows] == [(SCHEMA_HEAD,)]


def _current_revision(engine: Engine, where: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with translated(where), engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@dataclass(eq=False)
class Database:
    """An opened, schema-checked database. Hand out sessions; never commit for the caller.

    A process keeps one ``Database`` per SQLite file (and busy timeout): opening a file
    that is already open hands back the same object, its schema checked again through
    SQLite, and :meth:`dispose` closes it when the last opener has disposed of it. One
    engine per file keeps every connection of the process in one pool."""

    url: URL
    engine: Engine
    write_engine: Engine
    _key: tuple[str, int, str] | None = field(default=None, repr=False)
    _opened: int = field(default=1, repr=False)
    # LOOPSIM_CHAIN_KEY: every session carries it, for the hash chain (record/chain.py).
    chain_key: bytes | None = field(default=None, repr=False)

    @property
    def where(self) -> str:
        return display_url(self.url)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @classmethod
    def open(
        cls, url_or_path: str, *, busy_timeout_ms: int = 30_000, chain_key: bytes | None = None
    ) -> Database:
        """Open an existing database at the current schema, or raise a one-line error.
        ``chain_key`` keys the hash chains written and verified through it."""
        chain_key = chain_key or None
        url = normalize_url(url_or_path)
        where = display_url(url)
        path = sqlite_path(url)
        if path is not None and not path.exists():
            if not path.parent.is_dir():  # `db upgrade` would not create the folder either
                raise DatabaseMissing(
                    f"no database at {where}: folder {path.parent} does not exist"
                )
            raise DatabaseMissing(f"no database at {where}; create it with `loopsim db upgrade`")
        if path is None:
            engine = make_engine(url, busy_timeout_ms=busy_timeout_ms)
            if not _at_head(engine, where):
                check_revision(_current_revision(engine, where), where)
            write = engine.execution_options(loopsim_begin="IMMEDIATE")
            return cls(url, engine, write, chain_key=chain_key)
        # Checked before the engine's first connection writes to it (even the switch to
        # WAL rewrites the header), and checked again on every open.
        check_revision(sqlite_revision(path, where), where)
        # Openers with different chain keys get their own Database (the key's digest
        # tells them apart; the key itself is kept only on the Database).
        digest = hashlib.sha256(chain_key).hexdigest() if chain_key else ""
        key = (str(path.resolve()), int(busy_timeout_ms), digest)
        with _OPEN_LOCK:
            shared = _OPEN.get(key)
            if shared is not None:
                shared._opened += 1
                return shared
            engine = make_engine(url, busy_timeout_ms=busy_timeout_ms)
            write = engine.execution_options(loopsim_begin="IMMEDIATE")
            database = cls(url, engine, write, key, chain_key=chain_key)
            _OPEN[key] = database
            return database

    @contextlib.contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Session]:
        """A session for reading. It never commits; closing it ends the transaction and
        leaves loaded objects readable (detached, not expired).

        With ``snapshot``, every statement of it sees the record as of its first one, as
        an export of many statements needs: SQLite's read transactions always do, and on
        PostgreSQL it runs at REPEATABLE READ (read-only, so it never fails to serialize)
        rather than READ COMMITTED, where each statement sees what was committed before it.
        """
        bind = self.engine
        if snapshot and self.dialect == "postgresql":
            bind = self.engine.execution_options(isolation_level="REPEATABLE READ")
        with (
            translated(self.where),
            Session(bind, expire_on_commit=False, info=self._info()) as session,
        ):
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session whose block commits once at the end, or not at all."""
        with (
            translated(self.where),
            Session(self.write_engine, expire_on_commit=False, info=self._info()) as s,
        ):
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def _info(self) -> dict[str, Any]:
        return {CHAIN_KEY_INFO: self.chain_key} if self.chain_key else {}

    def dispose(self) -> None:
        """Close this opener's hold; the engine closes with the last one."""
        with _OPEN_LOCK:
            if self._opened > 1:
                self._opened -= 1
                return
            self._opened = 0
            if self._key is not None and _OPEN.get(self._key) is self:
                del _OPEN[self._key]
        self.engine.dispose()


# The process's open SQLite databases, by resolved path and busy timeout.
_OPEN: dict[tuple[str, int, str], Database] = {}
_OPEN_LOCK = threading.Lock()


def check_revision(current: str | None, where: str) -> None:
    if current == SCHEMA_HEAD:
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    if current == head:
        return
    if current is None:
        raise SchemaOutdated(f"{where} has no loopsim schema; {UPGRADE_HINT}")
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise SchemaTooNew(
            f"{where} is at schema {current}, which this loopsim does not know; "
            "upgrade loopsim itself"
        )
    raise SchemaOutdated(f"{where} is at schema {current}, behind {head}; {UPGRADE_HINT}")


@dataclass
class UpgradeResult:
    where: str
    before: str | None
    after: str  # "base" when nothing is left
    created: bool
    backup: Path | None


def copy_sqlite(path: Path, target: Path) -> None:
    """SQLite's backup API, all pages in one step: one read transaction on the source, so
    writers go on (safe under WAL) and the copy is one moment of the record. (A step-wise
    copy restarts whenever another process writes, and may never finish under a busy
    service.)"""
    src = readonly(path)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def backup_sqlite(path: Path, label: str) -> Path:
    """Copy a live SQLite file beside the original, before a migration."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.bak-{label}-{stamp}")
    copy_sqlite(path, target)
    return target


def upgrade(url_or_path: str, revision: str = "head") -> UpgradeResult:
    """Create the database if needed and migrate it up to ``revision``."""
    return _migrate(url_or_path, revision, down=False)


def downgrade(url_or_path: str, revision: str) -> UpgradeResult:
    """Migrate down to ``revision``. Never run automatically."""
    return _migrate(url_or_path, revision, down=True)


def _analyze(engine: Engine, where: str) -> None:
    """Give PostgreSQL's planner statistics for the record's tables (a no-op on SQLite),
    so plans after an upgrade, or a restore that ends with one, need not wait for
    autovacuum. The schema is already migrated and committed whatever happens here."""
    if engine.dialect.name != "postgresql":
        return
    try:
        with translated(where), engine.begin() as conn:
            planner_stats.analyze(conn)
    except exc.DBAPIError as error:
        first = (str(error.orig).strip().splitlines() or ["unknown error"])[0]
        raise DatabaseError(
            f"{where} is migrated, but ANALYZE of its tables failed: {first}"
        ) from error


def _migrate(url_or_path: str, revision: str, *, down: bool) -> UpgradeResult:
    """Run Alembic in one transaction, backing up an existing SQLite file first if the
    schema will change."""
    url = normalize_url(url_or_path)
    where = display_url(url)
    path = sqlite_path(url)
    created = path is not None and not path.exists()
    if created and down:
        raise DatabaseMissing(f"no database at {where}")
    if path is not None and created and not path.parent.exists():
        raise DatabaseError(f"cannot create {where}: folder {path.parent} does not exist")
    if path is not None and not created:
        # Refuse a corrupt or foreign file before anything writes to it.
        current = sqlite_revision(path, where)
        if down and current is None:
            raise DatabaseError(f"{where} has no loopsim schema to downgrade")
    engine = make_engine(url, foreign_keys=False)
    backup: Path | None = None
    migrated = False
    try:
        before = _current_revision(engine, where)
        changes = down or before != head_revision()
        if path is not None and not created and before is not None and changes:
            with translated(where):
                backup = backup_sqlite(path, before)
        from alembic import command

        try:
            with translated(where), engine.begin() as conn:
                cfg = alembic_config(url)
                cfg.attributes["connection"] = conn
                (command.downgrade if down else command.upgrade)(cfg, revision)
        except exc.DBAPIError as error:  # one transaction: it rolled back whole
            first = (str(error.orig).strip().splitlines() or ["unknown error"])[0]
            raise DatabaseError(f"migrating {where} failed and changed nothing: {first}") from error
        migrated = True
        after = _current_revision(engine, where)
        if not down:
            _analyze(engine, where)
    except BaseException:
        engine.dispose()
        if created and path is not None:  # a failed first upgrade leaves no empty file
            for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(OSError):  # a read-only folder: none was made
                    leftover.unlink(missing_ok=True)
        if backup is not None and not migrated:  # rolled back: the original is as it was
            backup.unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    return UpgradeResult(where, before, after or "base", created, backup)
