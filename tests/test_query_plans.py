"""What SQLite does with the statements of a day: none of them walks all of a run's days.

A day's reads of the ``days`` table must be index ranges bounded by the day index (or a
probe for the last index, or a row by its id). Two did walk the whole run: the count
behind the day budget and the check-in schedule (its status test was an OR, which no
index range serves), and the check-in test's reads of a few days' entries (no status at
all). At 20,000 days they cost 3.5 and 2 ms each, several times a day, growing with the
record; the plans are the same whatever the size, so a short run shows them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.store import EntryInput, Store
from loopsim.schemas import parse_spec
from loopsim.testing import add_day, scripted_factory
from tests.conftest import SPEC, make_run

CHECKINS = {
    "every_days": 100000,
    "spot_check_probability": 0.0,
    "charter_drift_window": 3,
    "charter_drift_drop": 0.5,
    "future_leak": True,
    "max_unsupervised_days": 1000,
}


def _plans(database: Any, statements: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(statement, each line of its plan) for every SELECT that reads ``days``."""
    found = []
    with database.engine.connect() as conn:
        for statement, params in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params):
                detail = row[-1]
                if " days " in f" {detail} ".replace("days_1", "days"):
                    found.append((statement, detail))
    return found


def test_a_day_and_its_check_in_test_read_days_by_index_range(database):
    budget = {**SPEC["budget"], "days": 1000}
    spec = parse_spec(
        {**SPEC, "budget": budget, "checkins": CHECKINS, "digests": {"every_days": 3}}
    )
    run_id = make_run(database, spec)
    with database.write() as session:
        for index in range(1, 41):  # a record to walk, were a statement to walk it
            note = EntryInput("note", f"Day {index}", f"Foragers counted at patch {index}.")
            add_day(Store(session), run_id, index, [note])
    factory, _ = scripted_factory()
    loop = Loop(database, Settings(), factory)
    loop.start(run_id)
    loop.step(run_id)  # its first day here: the statements below are the steady ones
    statements: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        statements.append((statement, params))

    event.listen(database.engine, "before_cursor_execute", grab)
    try:
        assert loop.step(run_id) is not None
        assert loop.checkin_due(run_id) is False
    finally:
        event.remove(database.engine, "before_cursor_execute", grab)

    plans = _plans(database, statements)
    assert len(plans) >= 10  # the plan, the commit and the check-in test all read days
    bounds = ("index>", "index<", "index=", "rowid=")

    def walks_the_run(statement: str, detail: str) -> bool:
        if "SCAN" in detail:
            return True
        # A probe for the last index reads one entry from the index's end.
        return not any(bound in detail for bound in bounds) and "max(days" not in statement

    walks = [
        (" ".join(statement.split())[:160], detail)
        for statement, detail in plans
        if walks_the_run(statement, detail)
    ]
    assert walks == []


def test_a_day_runs_no_statement_sqlalchemy_must_rewrite_each_time(database):
    """An IN over a Python list is an "expanding" parameter: SQLAlchemy splices the list
    into the SQL string on every execution, a fifth of a short query's cost. A day, the
    worker's turn and the check-in test bind fixed lists once (``one_of``)."""
    spec = parse_spec({**SPEC, "budget": {**SPEC["budget"], "days": 1000}, "checkins": CHECKINS})
    run_id = make_run(database, spec)
    factory, _ = scripted_factory()
    loop = Loop(database, Settings(), factory)
    loop.start(run_id)
    loop.step(run_id)
    rewritten: list[str] = []
    executed: list[str] = []

    def grab(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, *_: Any):
        executed.append(statement)
        compiled = getattr(context, "compiled", None)
        if compiled is not None and compiled.post_compile_params:
            rewritten.append(" ".join(statement.split())[:160])

    event.listen(database.engine, "before_cursor_execute", grab)
    try:
        assert loop.step(run_id) is not None
        assert loop.next_day(run_id) is not None
        assert loop.open_due_checkin(run_id) is None
    finally:
        event.remove(database.engine, "before_cursor_execute", grab)
    assert len(executed) >= 30  # the day, the turn and the test all ran their reads
    assert rewritten == []
