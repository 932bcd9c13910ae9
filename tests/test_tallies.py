"""`run list` reads every run's tally in two grouped statements: what it shows matches
asking run by run, and the statements it runs do not grow with the number of runs."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from loopsim.record import db as dbmod
from loopsim.record.store import EntryInput, RunTally, Store
from loopsim.researcher.conversation import Logged
from loopsim.schemas import DayStatus
from loopsim.testing import add_day
from tests.conftest import Cli, make_run


def probe_call(tokens_in: int) -> Logged:
    return Logged(1, "probe", 0, 1, [], "a prediction", True, None, "seed", tokens_in, 7, 30)


def varied_runs(database: dbmod.Database, spec: Any) -> list[str]:
    """Four runs: days of every status with a check-in's probe calls; only failed tries;
    no days at all; and a plain one."""
    ids = [make_run(database, spec) for _ in range(4)]
    with database.write() as session:
        store = Store(session)
        note = [EntryInput("note", "N", "body")]
        busy, failing, _empty, plain = ids
        for index in range(1, 7):
            if index == 3:
                add_day(store, busy, 3, status=DayStatus.FAILED, error="bad")
            status = DayStatus.REVERTED if index in (4, 5) else DayStatus.COMMITTED
            add_day(store, busy, index, note, status=status)
        store.add_later_calls(busy, 6, [probe_call(900), probe_call(100)])
        add_day(store, failing, 1, status=DayStatus.FAILED, error="down")
        add_day(store, failing, 1, status=DayStatus.FAILED, error="down again")
        for index in range(1, 3):
            add_day(store, plain, index, note)
    return ids


def one_by_one(store: Store, run_id: str) -> RunTally:
    return RunTally(
        store.count_days(run_id, DayStatus.COMMITTED),
        store.count_days(run_id, DayStatus.FAILED),
        store.count_days(run_id, DayStatus.REVERTED),
        store.next_day_index(run_id),
        store.usage(run_id),
    )


def test_tallies_match_asking_run_by_run(any_db, spec):
    ids = varied_runs(any_db, spec)
    with any_db.read() as session:
        store = Store(session)
        every = store.tallies()
        some = store.tallies(ids[:2])
        expected = {run_id: one_by_one(store, run_id) for run_id in ids}
    assert {run_id: every.get(run_id, RunTally()) for run_id in ids} == expected
    assert set(some) == set(ids[:2])
    busy, failing, empty, _plain = ids
    assert expected[busy][:4] == (4, 1, 2, 7)
    assert expected[busy].usage == (1000, 14, 60)  # the probe calls count; seeded days none
    assert expected[failing][:4] == (0, 2, 0, 1)
    assert expected[empty] == RunTally()


def test_run_list_statements_do_not_grow_with_the_runs(sqlite_url, spec):
    database = dbmod.Database.open(sqlite_url)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def run_list() -> list[dict[str, Any]]:
        statements.clear()
        event.listen(Engine, "before_cursor_execute", count)
        try:
            done = Cli(sqlite_url)("run", "list", "--json")
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    varied_runs(database, spec)
    rows = run_list()
    few = len(statements)
    for _ in range(5):
        varied_runs(database, spec)
    database.dispose()
    assert len(run_list()) == 6 * len(rows) == 24
    assert len(statements) == few, statements[few:]


def test_run_list_names_the_worker_of_a_live_lease(sqlite_url, spec):
    """The database's clock is read once for all runs; a lease still counts by it."""
    database = dbmod.Database.open(sqlite_url)
    live, lapsed = varied_runs(database, spec)[:2]
    with database.write() as session:
        store = Store(session)
        now = store.db_now()
        for run_id, owner, expires in (
            (live, "w-live", now + dt.timedelta(hours=1)),
            (lapsed, "w-gone", now - dt.timedelta(seconds=1)),
        ):
            run = store.get_run(run_id)
            run.status, run.lease_owner, run.lease_expires_at = "running", owner, expires
    database.dispose()
    done = Cli(sqlite_url)("run", "list", "--json")
    assert done.exit_code == 0, done.output
    workers = {row["id"]: (row["worker"], row["driver"]) for row in json.loads(done.stdout)}
    assert workers[live] == ("w-live", "serve w-live")
    assert workers[lapsed] == (None, "serve")
