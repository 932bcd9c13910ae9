"""The view: pinned parts, budget, visibility rules and a prefix that stays stable."""

from __future__ import annotations

import datetime as dt

from loopsim.record.store import EntryInput, Store
from loopsim.researcher.view import build_view, estimate_tokens
from loopsim.schemas import Author, DayStatus, EntryKind
from loopsim.testing import add_day
from tests.conftest import make_run

DATE = dt.date(2025, 6, 2)


def note(title: str, body: str = "A plain observation about bees and flowers.") -> EntryInput:
    return EntryInput("note", title, body)


def view_of(database, run_id, spec, budget=3000, date=DATE):
    with database.read() as session:
        return build_view(Store(session), run_id, spec.charter, date, budget)


def test_first_day_view_has_the_charter_and_says_the_log_is_empty(database, spec):
    run_id = make_run(database, spec)
    text = view_of(database, run_id, spec).render()
    assert text.startswith("# Charter\nUnderstand how honeybee colonies")
    assert "How do colonies weigh distance" in text
    assert "first day" in text


def test_view_stays_within_budget_and_keeps_the_newest_entries(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        for index in range(1, 121):
            add_day(store, run_id, index, [note(f"Entry {index}", "word " * 60)])
    view = view_of(database, run_id, spec, budget=1500)
    assert estimate_tokens(view.render()) <= 1500
    assert view.recent[-1].title == "Entry 120"
    assert [e.seq for e in view.recent] == sorted(e.seq for e in view.recent)
    assert 5 < len(view.recent) < 120


def test_corrections_stay_pinned_however_long_the_record(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        store.append_entries(
            run_id,
            [
                EntryInput(
                    EntryKind.CORRECTION,
                    "Use marked bees",
                    "Always mark foragers before counting.",
                    author=Author.HUMAN,
                )
            ],
            day=None,
            external_date=DATE,
        )
        for index in range(1, 200):
            add_day(store, run_id, index, [note(f"Entry {index}", "word " * 60)])
    text = view_of(database, run_id, spec, budget=1200).render()
    assert "Always mark foragers before counting." in text
    assert text.index("Corrections") < text.index("Research log")


def test_reverted_failed_and_future_entries_are_never_shown(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        add_day(store, run_id, 1, [note("Kept entry")])
        add_day(store, run_id, 2, [note("Rejected by a human")], status=DayStatus.REVERTED)
        add_day(store, run_id, 3, [note("From the future")], date=DATE + dt.timedelta(days=1))
    text = view_of(database, run_id, spec).render()
    assert "Kept entry" in text
    assert "Rejected by a human" not in text
    assert "From the future" not in text


def test_old_entries_matching_open_questions_come_back_by_full_text(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        add_day(
            store,
            run_id,
            1,
            [
                note(
                    "Nectar versus distance",
                    "Colonies weigh distance against nectar quality by dance length.",
                )
            ],
        )
        for index in range(2, 80):
            add_day(store, run_id, index, [note(f"Filler {index}", "word " * 60)])
    view = view_of(database, run_id, spec, budget=1500)
    assert "Nectar versus distance" not in [e.title for e in view.recent]
    assert [e.title for e in view.related] == ["Nectar versus distance"]


def test_a_new_day_only_appends_to_the_previous_view(database, spec):
    run_id = make_run(database, spec)
    with database.write() as session:
        add_day(Store(session), run_id, 1, [note("First")])
    before = view_of(database, run_id, spec).render()
    with database.write() as session:
        add_day(Store(session), run_id, 2, [note("Second")])
    after = view_of(database, run_id, spec).render()
    assert after.startswith(before)
