"""Alembic migrations: one head, up and down, models match, old schemas refused."""

from __future__ import annotations

import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from loopsim.errors import DatabaseCorrupt, DatabaseMissing, SchemaOutdated, SchemaTooNew
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.record.tables import Base
from loopsim.schemas import DayStatus
from tests.conftest import make_run

FTS_TABLES = {
    "entries_fts",
    "entries_fts_data",
    "entries_fts_idx",
    "entries_fts_docsize",
    "entries_fts_config",
    "entries_fts_content",
}
# PostgreSQL's search vector (migration 0010): a generated column no query maps.
SEARCH_NAMES = {"ix_entries_fts", "search_vector", "ix_entries_search_vector"}


def test_there_is_one_head():
    script = ScriptDirectory.from_config(dbmod.alembic_config())
    assert len(script.get_heads()) == 1


def test_the_schema_head_that_opening_checks_is_alembics_head():
    """Opening a database compares its revision with SCHEMA_HEAD, so that no command
    imports Alembic just to start: a new migration must move the constant too."""
    assert dbmod.head_revision() == dbmod.SCHEMA_HEAD, (
        "a migration was added: set SCHEMA_HEAD in loopsim/record/db.py to its revision"
    )


def test_an_old_or_unknown_schema_is_refused_on_every_backend(any_url):
    dbmod.downgrade(any_url, "0001")
    with pytest.raises(SchemaOutdated, match=r"at schema 0001, behind \d+; run `loopsim db"):
        dbmod.Database.open(any_url)
    dbmod.upgrade(any_url)
    engine = dbmod.make_engine(dbmod.normalize_url(any_url))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(SchemaTooNew, match="schema 9999, which this loopsim does not"):
            dbmod.Database.open(any_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM alembic_version")
        # SQLite looks at the file itself first: tables without a revision are not ours.
        empty = (
            (DatabaseCorrupt, "another program's tables")
            if any_url.endswith(".db")
            else (SchemaOutdated, "has no loopsim schema")
        )
        with pytest.raises(empty[0], match=empty[1]):
            dbmod.Database.open(any_url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO alembic_version VALUES ('{dbmod.SCHEMA_HEAD}')")
        dbmod.Database.open(any_url).dispose()
    finally:
        engine.dispose()


def _diff(url: str) -> list:
    engine = dbmod.make_engine(dbmod.normalize_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, kind, parent: (
                        name not in FTS_TABLES and name not in SEARCH_NAMES
                    ),
                },
            )
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(any_url):
    assert _diff(any_url) == []


def test_upgrade_downgrade_upgrade_round_trips(any_url):
    dbmod.downgrade(any_url, "base")
    engine = dbmod.make_engine(dbmod.normalize_url(any_url))
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is None
    engine.dispose()
    assert dbmod.upgrade(any_url).after == dbmod.head_revision()
    assert _diff(any_url) == []


def test_a_database_one_migration_behind_is_refused_then_upgraded_with_data(sqlite_url, spec):
    database = dbmod.Database.open(sqlite_url)
    run_id = make_run(database, spec)
    database.dispose()
    dbmod.downgrade(sqlite_url, "0001")
    with pytest.raises(SchemaOutdated, match="`loopsim db upgrade`") as info:
        dbmod.Database.open(sqlite_url)
    assert "0001" in str(info.value)
    result = dbmod.upgrade(sqlite_url)
    assert (result.before, result.after) == ("0001", dbmod.head_revision())
    assert result.backup is not None
    assert result.backup.exists()
    backup_rev = (
        sqlite3.connect(result.backup)
        .execute("SELECT version_num FROM alembic_version")
        .fetchone()[0]
    )
    assert backup_rev == "0001"
    database = dbmod.Database.open(sqlite_url)
    with database.read() as session:
        assert Store(session).get_run(run_id).name == "test"
    database.dispose()


def test_missing_database_is_named_and_not_created(tmp_path):
    path = tmp_path / "typo.db"
    with pytest.raises(DatabaseMissing, match="loopsim db upgrade"):
        dbmod.Database.open(str(path))
    assert not path.exists()
    # In a folder that is not there, `db upgrade` would fail too: name the folder instead.
    nested = tmp_path / "no" / "such" / "x.db"
    with pytest.raises(DatabaseMissing, match=r"folder .*such does not exist") as raised:
        dbmod.Database.open(str(nested))
    assert "db upgrade" not in raised.value.message
    assert not (tmp_path / "no").exists()


def test_a_database_from_a_newer_loopsim_is_refused(sqlite_url, cli_factory):
    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNew, match="upgrade loopsim itself"):
        dbmod.Database.open(sqlite_url)
    # `db upgrade` said "cannot upgrade to 'head': Can't locate revision identified by
    # '9999'", as if the revision asked for were wrong, not the database's.
    upgraded = cli_factory(sqlite_url)("db", "upgrade")
    assert upgraded.exit_code == 1, upgraded.output
    (line,) = upgraded.stderr.strip().splitlines()
    assert line == (
        f"error: {sqlite_url} is at schema 9999, which this loopsim does not know; "
        "upgrade loopsim itself"
    )
    asked = cli_factory(sqlite_url)("db", "upgrade", "--revision", "7777")
    assert asked.exit_code == 2
    assert "cannot upgrade to '7777'" in asked.stderr


def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(sqlite_url):
    database = dbmod.Database.open(sqlite_url)
    with database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    database.dispose()


def test_0009_makes_trailing_failed_days_tries_and_keeps_the_resume_mark(any_url, spec):
    """Before 0009 a failed day took an index. Trailing failed days become tries of the
    next day; failed days between others stay as gaps that counting allows for; a resume
    mark (an index) becomes the row it pointed at."""
    import sqlalchemy as sa

    from loopsim.testing import add_day

    database = dbmod.Database.open(any_url)
    run_id = make_run(database, spec)
    statuses = ["committed", "failed", "committed", "failed", "failed"]
    with database.write() as session:
        store = Store(session)
        ids = [add_day(store, run_id, n, status=s).id for n, s in enumerate(statuses, 1)]
    database.dispose()
    dbmod.downgrade(any_url, "0008")
    engine = dbmod.make_engine(dbmod.normalize_url(any_url))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE runs SET resumed_after_day = 4"))
    engine.dispose()
    dbmod.upgrade(any_url)
    database = dbmod.Database.open(any_url)
    with database.read() as session:
        store = Store(session)
        days = [(d.id, d.index, d.status) for d in store.list_days(run_id)]
        assert days == [
            (ids[0], 1, "committed"),
            (ids[1], 2, "failed"),
            (ids[2], 3, "committed"),
            (ids[3], 4, "failed"),
            (ids[4], 4, "failed"),
        ]
        assert store.next_day_index(run_id) == 4
        assert store.committed_days_after(run_id, 0) == 2
        assert store.committed_days_after(run_id, 1) == 1
        assert store.count_days(run_id, DayStatus.FAILED, index=4) == 2
        assert store.get_run(run_id).resumed_after_day_id == ids[3]
        # Only the failed try after the resume mark counts toward failing the run.
        assert store.failed_streak(run_id, 3, after_id=ids[3]) == 1
    database.dispose()


def test_a_checkout_imported_from_its_root_finds_the_migrations_beside_it(monkeypatch):
    """With the strict editable install, ``python -m loopsim`` or pytest run at the
    checkout's root import its ``loopsim/`` folder, which has no ``_migrations``: every
    database command failed with "migrations are missing from this install"."""
    import importlib.util
    from pathlib import Path

    real = importlib.util.find_spec

    def no_installed_migrations(name, *args):  # type: ignore[no-untyped-def]
        return None if name == "loopsim._migrations" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_installed_migrations)
    found = Path(dbmod.migrations_dir())
    assert (found / "env.py").is_file()
    assert found == Path(__file__).resolve().parents[1] / "migrations"
