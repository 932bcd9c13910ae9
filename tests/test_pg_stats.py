"""PostgreSQL without planner statistics: the view's search never parses entry text, and
loopsim gives the planner statistics itself (``db upgrade``, and ``loopsim serve`` as it
commits days). Real PostgreSQL on 127.0.0.1; no timing: plans and catalog rows."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from loopsim.config import Settings
from loopsim.record import db as dbmod
from loopsim.record.planner_stats import EVERY_DAYS, StatisticsKeeper
from loopsim.record.store import EntryInput, Store
from loopsim.researcher.view import build_view
from loopsim.schemas import EntryKind, RunStatus
from loopsim.service.worker import Service, ServiceConfig
from loopsim.testing import add_day, scripted_factory
from tests.conftest import make_run

DATE = dt.date(2025, 6, 2)
WORDS = ["colonies", "weigh", "distance", "against", "nectar", "quality"]


def body(n: int) -> str:
    """Forty words, one in seven from the charter's open question, the rest filler."""
    return " ".join(
        WORDS[n % len(WORDS)] if k % 7 == 0 else f"filler{(n * 41 + k) % 97}" for k in range(40)
    )


def seed(database: dbmod.Database, spec: Any, runs: int = 2, days: int = 60) -> list[str]:
    """Runs of ``days`` days, five entries a day, written in one transaction each."""
    run_ids = []
    for _ in range(runs):
        run_id = make_run(database, spec)
        with database.write() as session:
            store = Store(session)
            for index in range(1, days + 1):
                items = [
                    EntryInput(EntryKind.NOTE, f"Day {index} note {k}", body(index * 5 + k))
                    for k in range(5)
                ]
                add_day(store, run_id, index, items, date=DATE)
        run_ids.append(run_id)
    return run_ids


def sql(url: str, statement: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            result = conn.exec_driver_sql(statement, params or None)
            return list(result) if result.returns_rows else []
    finally:
        engine.dispose()


def autovacuum_off(url: str) -> None:
    for (table,) in sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
        sql(url, f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')


def analysed(url: str) -> dict[str, bool]:
    rows = sql(
        url,
        "SELECT relname, last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL "
        "FROM pg_stat_user_tables",
    )
    return {name: bool(done) for name, done in rows}


def column_stats(url: str, table: str) -> int:
    return sql(url, "SELECT count(*) FROM pg_stats WHERE tablename = %(t)s", t=table)[0][0]


def wait_for_counts(url: str, table: str, rows: int) -> None:
    """Wait until the statistics collector has counted ``rows`` inserts into ``table``:
    a backend reports its counts a moment after its transactions end."""
    deadline = time.monotonic() + 60
    while True:
        found = sql(url, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = %(t)s", t=table)
        if found and found[0][0] >= rows:
            return
        assert time.monotonic() < deadline, f"{table}: {found} inserts counted"
        time.sleep(0.2)


@pytest.fixture
def bare(pg_url: str, spec: Any) -> Iterator[tuple[dbmod.Database, list[str]]]:
    """Two runs of 300 entries on tables autovacuum never looks at and nothing analysed."""
    autovacuum_off(pg_url)
    database = dbmod.Database.open(pg_url)
    run_ids = seed(database, spec)
    yield database, run_ids
    database.dispose()


@pytest.mark.postgres
def test_the_views_search_never_parses_entry_text_on_tables_without_statistics(bare, spec):
    database, run_ids = bare
    url = database.url.render_as_string(hide_password=False)
    assert column_stats(url, "entries") == 0  # the planner has only its default guesses
    searches: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "@@" in statement:
            searches.append((statement, params))

    event.listen(database.engine, "before_cursor_execute", grab)
    try:
        with database.read() as session:
            view = build_view(
                Store(session), run_ids[1], spec.charter, DATE, Settings().view_token_budget
            )
    finally:
        event.remove(database.engine, "before_cursor_execute", grab)
    assert view.related, "the view found none of the entries about its open question"
    assert len(searches) == 1
    statement, params = searches[0]
    with database.engine.connect() as conn:
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, params))
    # Parsing an entry's text is what made the guessed plan cost seconds: every entry of
    # the run, each parsed again (0.2 ms apiece) before the index was ever asked.
    assert "to_tsvector" not in plan, plan
    assert "search_vector" in plan, plan


@pytest.mark.postgres
def test_db_upgrade_gives_a_filled_record_statistics_and_search_vectors(pg_url, spec):
    # A record written, then taken back to before the stored vectors (the ORM maps
    # today's schema, so the rows are written first).
    autovacuum_off(pg_url)
    database = dbmod.Database.open(pg_url)
    try:
        run_id = seed(database, spec, runs=1, days=20)[0]
    finally:
        database.dispose()
    dbmod.downgrade(pg_url, "0009")
    assert column_stats(pg_url, "entries") == 0

    result = dbmod.upgrade(pg_url)

    assert (result.before, result.after) == ("0009", dbmod.SCHEMA_HEAD)
    done = analysed(pg_url)
    assert all(done[table] for table in ("runs", "days", "entries")), done
    assert column_stats(pg_url, "entries") > 0
    database = dbmod.Database.open(pg_url)
    try:
        with database.read() as session:
            hits = Store(session).search(run_id, "nectar quality", limit=200)
    finally:
        database.dispose()
    # Every entry written before the upgrade got its vector: all 100 mention one of the
    # words on every seventh word, and those that say nectar or quality are found.
    expected = sum(1 for n in range(5, 105) if WORDS[n % len(WORDS)] in ("nectar", "quality"))
    assert len(hits) == expected > 0


@pytest.mark.postgres
def test_loopsim_serve_analyses_a_record_it_finds_without_statistics(bare, spec):
    database, _ = bare
    url = database.url.render_as_string(hide_password=False)
    wait_for_counts(url, "entries", 600)
    assert column_stats(url, "entries") == 0
    run_id = make_run(
        database, spec.model_copy(update={"budget": spec.budget.model_copy(update={"days": 1})})
    )
    with database.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.RUNNING)
    factory, _ = scripted_factory()
    config = ServiceConfig(worker_id="w1", http_port=None, poll_seconds=0.05, grace_seconds=5.0)
    service = Service(database, Settings(), factory, config)

    async def serve_until_completed() -> None:
        task = asyncio.ensure_future(service.serve(install_signals=False))
        deadline = time.monotonic() + 120
        try:
            while True:
                with database.read() as session:
                    if Store(session).get_run(run_id).status == RunStatus.COMPLETED:
                        return
                assert time.monotonic() < deadline, "the run did not complete"
                if task.done():
                    task.result()
                await asyncio.sleep(0.1)
        finally:
            service.request_stop()
            await task

    asyncio.run(serve_until_completed())
    assert column_stats(url, "entries") > 0
    assert column_stats(url, "days") > 0


@pytest.mark.postgres
def test_a_service_renews_missing_statistics_on_its_first_day_then_every_few(bare):
    database, _ = bare
    url = database.url.render_as_string(hide_password=False)
    keeper = StatisticsKeeper(database)
    wait_for_counts(url, "entries", 600)  # so no count arrives after the analysis
    assert column_stats(url, "entries") == 0

    # Two runs changed are below autovacuum's threshold (50 rows plus 10%); 120 days
    # and 600 entries are not.
    assert keeper.day_committed() == ["days", "entries"]
    assert analysed(url)["entries"]
    assert column_stats(url, "entries") > 0
    # Between looks it reads nothing; at the next look nothing has changed enough.
    assert all(keeper.day_committed() == [] for _ in range(EVERY_DAYS))
    assert keeper.days == EVERY_DAYS + 1


def test_sqlite_is_left_to_its_own_planner(database):
    keeper = StatisticsKeeper(database)
    assert keeper.day_committed() == []
    with database.engine.connect() as conn:
        names = {row[0] for row in conn.exec_driver_sql("SELECT name FROM sqlite_master")}
    assert "sqlite_stat1" not in names
