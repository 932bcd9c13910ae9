"""Shared fixtures. Every database here is real: SQLite files migrated by Alembic, and,
where a test asks for ``any_db``, a fresh PostgreSQL database on 127.0.0.1:5432 too.

Alembic runs once per session and database kind, into a template: each test gets its own
copy of the migrated SQLite file, or a PostgreSQL database created from the migrated
template database. Running every migration for each of several hundred tests took minutes
of the suite; tests of migrating itself call ``dbmod.upgrade`` on databases of their own."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loopsim.cli import AppContext, app
from loopsim.config import Settings
from loopsim.record import db as dbmod
from loopsim.record import planner_stats
from loopsim.record.store import Store
from loopsim.schemas import RunSpec, parse_spec
from loopsim.testing import ScriptedChatModel, scripted_factory

# Longest test files first under xdist, and `make durations` to measure them again.
pytest_plugins = ["tests.slowest_first"]

PG_ADMIN = os.environ.get(
    "LOOPSIM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

SPEC: dict[str, Any] = {
    "persona": {
        "name": "Dr. Test Person",
        "background": "A field ecologist who studies pollinators.",
        "style": "Plain and careful.",
    },
    "charter": {
        "agenda": "Understand how honeybee colonies choose where to forage.",
        "open_questions": ["How do colonies weigh distance against nectar quality?"],
    },
    "time": {"policy": "fixed", "anchor": "2025-06-02"},
    "budget": {"days": 30, "output_tokens_per_day": 400},
    # Day-loop tests run without check-ins; tests/test_checkin.py sets its own policy.
    "checkins": {"every_days": 100000, "spot_check_probability": 0.0, "final": False},
    # One model call a day, so tests can count calls; tests/test_amplify.py turns digests on.
    "digests": {"every_days": 0},
}


@pytest.fixture
def spec() -> RunSpec:
    return parse_spec(SPEC)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per session; never opened by a test."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    dbmod.upgrade(str(path))
    # The last connection closed checkpointed the WAL: the file alone is the database.
    leftovers = [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    assert not leftovers, f"the migrated template left {leftovers} behind"
    return path


def migrated_sqlite(template: Path, path: Path) -> str:
    """A fresh migrated database at ``path``: a copy of the closed template file."""
    shutil.copyfile(template, path)
    return str(path)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    return migrated_sqlite(sqlite_template, tmp_path / "loopsim.db")


def _pg_available() -> bool:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server() -> str:
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 in CI")
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    return PG_ADMIN


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """A PostgreSQL database migrated to head once per session, the template of each
    test's database. Nothing stays connected to it: CREATE DATABASE ... TEMPLATE needs
    that. Its name is this session's own, so suites running at once never share it."""
    import sqlalchemy as sa

    name = f"loopsim_template_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        dbmod.upgrade(pg_server.rsplit("/", 1)[0] + f"/{name}")
        yield name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def pg_url(pg_server: str, pg_template: str) -> Iterator[str]:
    import sqlalchemy as sa

    name = f"loopsim_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    # A copy carries no planner statistics (they live in the server's statistics, not in
    # the template), where `db upgrade` ends with ANALYZE: give the copy the same state.
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            planner_stats.analyze(conn)
    finally:
        engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        return migrated_sqlite(template, tmp_path / "any.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def database(sqlite_url: str) -> Iterator[dbmod.Database]:
    database = dbmod.Database.open(sqlite_url)
    yield database
    database.dispose()


@pytest.fixture
def any_db(any_url: str) -> Iterator[dbmod.Database]:
    database = dbmod.Database.open(any_url)
    yield database
    database.dispose()


def make_run(database: dbmod.Database, spec: RunSpec, model: str = "scripted:test") -> str:
    with database.write() as session:
        return Store(session).create_run(spec, name="test", model=model).id


@pytest.fixture
def scripted() -> tuple[Any, ScriptedChatModel]:
    return scripted_factory()


class Cli:
    """Runs the real Typer app in-process with a scripted model injected at the seam."""

    def __init__(self, url: str, factory: Any = None, **settings: Any) -> None:
        self.url = url
        self.factory = factory
        self.settings = settings
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Any:
        obj = AppContext(Settings(database_url=self.url, **self.settings), self.factory)
        return self.runner.invoke(app, list(args), obj=obj, input=input)


@pytest.fixture
def cli_factory() -> Callable[..., Cli]:
    return Cli


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
