"""Reading a whole record in batches (loopsim/record/streams.py): exports and `record show`
hold a batch of the record at a time, never all of it, and give what one whole read gives,
on SQLite and on PostgreSQL (whose batches come from a server-side cursor)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import typer

from loopsim.cli import app
from loopsim.cli.context import AppContext
from loopsim.config import Settings
from loopsim.exports.markdown import markdown_chunks, to_jsonl
from loopsim.exports.report import html_chunks
from loopsim.record import db as dbmod
from loopsim.record.store import EntryInput, Store
from loopsim.record.streams import BATCH
from loopsim.schemas import Author, DayStatus, EntryKind
from loopsim.testing import add_day
from tests.conftest import make_run

DATE = dt.date(2025, 6, 2)


def seed(database: dbmod.Database, spec: Any, days: int, per_day: int = 7) -> str:
    """A record of ``days`` days of ``per_day`` entries: a note with the rest answering
    it, so each day is a tree. Day 3 has two failed tries before it, days 5 and 6 are
    reverted, and a human correction stands outside any day."""
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        for index in range(1, days + 1):
            if index == 3:
                for attempt in range(2):
                    add_day(store, run_id, 3, status=DayStatus.FAILED, error=f"bad {attempt}")
            items = [EntryInput("note", f"Note {index}", f"Day {index} began.")] + [
                EntryInput("answer", f"Answer {index}.{k}", f"Reply {k}.", parent=0)
                for k in range(1, per_day)
            ]
            status = DayStatus.REVERTED if index in (5, 6) else DayStatus.COMMITTED
            add_day(store, run_id, index, items, status=status)
        store.append_entries(
            run_id,
            [EntryInput(EntryKind.CORRECTION, "Correction", "Bees dance.", author=Author.HUMAN)],
            day=None,
            external_date=DATE,
        )
    return run_id


def whole_read(store: Store, run_id: str, include_reverted: bool) -> list[tuple[Any, ...]]:
    """What the exports read before they streamed: every day as an ORM object, each with
    its entries grouped from one list of all of them."""
    by_day: dict[int | None, list[Any]] = {}
    for entry, _index, _status in store.list_entries(run_id, include_reverted=include_reverted):
        by_day.setdefault(entry.day_id, []).append(entry)
    seqs = store.entry_seqs(run_id)
    out = []
    for day in store.list_days(run_id):
        if day.status == DayStatus.REVERTED and not include_reverted:
            continue
        entries = [
            (e.seq, e.kind, e.title, e.hash, seqs.get(e.parent_id)) for e in by_day.get(day.id, [])
        ]
        out.append((day.id, day.index, day.status, day.error, entries))
    return out


@pytest.mark.parametrize("include_reverted", [False, True])
def test_days_with_entries_gives_what_a_whole_read_gives(any_db, spec, include_reverted):
    run_id = seed(any_db, spec, days=BATCH // 7 + 20)  # more rows than one batch
    with any_db.read() as session:
        store = Store(session)
        expected = whole_read(store, run_id, include_reverted)
        streamed = [
            (
                day.id,
                day.index,
                day.status,
                day.error,
                [(e.seq, e.kind, e.title, e.hash, e.parent_seq) for e in entries],
            )
            for day, entries in store.days_with_entries(run_id, include_reverted=include_reverted)
        ]
        outside = store.outside_entries(run_id)
        every = whole_read(store, run_id, include_reverted=True)
        counted = [(day.id, count) for day, count in store.days_with_counts(run_id)]
    assert streamed == expected
    assert counted == [(d[0], len(d[4])) for d in every]
    assert sum(len(d[4]) for d in streamed) > BATCH
    assert [d[1] for d in streamed if d[2] == DayStatus.FAILED] == [3, 3]
    assert any(d[2] == DayStatus.REVERTED for d in streamed) == include_reverted
    assert [(e.kind, e.day_id) for e in outside] == [(EntryKind.CORRECTION, None)]


def test_entry_pages_walk_the_record_in_seq_order(any_db, spec):
    run_id = seed(any_db, spec, days=BATCH // 7 + 20)
    with any_db.read() as session:
        store = Store(session)
        expected = [(e.seq, index, status) for e, index, status in store.list_entries(run_id)]
        day_9 = [e.seq for e, _, _ in store.list_entries(run_id, day_index=9)]
        walked: list[tuple[int, int | None, str | None]] = []
        after = 0
        while page := store.entry_page(run_id, after, limit=97):
            walked += [(p.entry.seq, p.day_index, p.day_status) for p in page]
            after = page[-1].entry.seq
        one_day = [p.entry.seq for p in store.entry_page(run_id, 0, day_index=9)]
    assert walked == expected
    assert one_day == day_9
    assert len(day_9) == 7


def _peak(fn: Any) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _consume(database: dbmod.Database, run_id: str) -> None:
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        for _chunk in markdown_chunks(store, run, include_reverted=True):
            pass
        for _line in to_jsonl(store, run, include_reverted=True):
            pass


def _html(database: dbmod.Database, run_id: str) -> None:
    with database.read() as session:
        store = Store(session)
        for _chunk in html_chunks(store, store.get_run(run_id), include_reverted=True):
            pass


def _show(url: str, run_id: str) -> None:
    obj = AppContext(Settings(database_url=url))
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        typer.main.get_command(app).main(["record", "show", run_id], obj=obj, standalone_mode=False)


def test_exports_and_record_show_hold_a_batch_not_the_record(tmp_path, sqlite_template, spec):
    """Peak Python memory of the exports and of `record show` on a record of 2 batches
    and on one of 10: flat (the HTML report keeps a timeline line a day), where reading
    the whole record made it grow fivefold."""
    from tests.conftest import migrated_sqlite

    peaks: dict[str, list[int]] = {"export": [], "html": [], "show": []}
    for days in (2 * BATCH // 7, 10 * BATCH // 7):
        url = migrated_sqlite(sqlite_template, tmp_path / f"{days}.db")
        database = dbmod.Database.open(url)
        run_id = seed(database, spec, days=days)
        _consume(database, run_id)  # warm: first-use caches are not the record
        peaks["export"].append(_peak(lambda: _consume(database, run_id)))  # noqa: B023
        _html(database, run_id)
        peaks["html"].append(_peak(lambda: _html(database, run_id)))  # noqa: B023
        database.dispose()
        _show(url, run_id)
        peaks["show"].append(_peak(lambda: _show(url, run_id)))  # noqa: B023
    for name, (small, large) in peaks.items():
        assert large < 2 * small, f"{name}: {small} bytes at 2 batches, {large} at 10"


def test_record_show_holds_no_snapshot_while_its_reader_waits(sqlite_url, spec):
    """`record show | less`, left open: the command blocks writing to the pipe, and while
    it waits it must not hold a read transaction, or SQLite's WAL could never be
    checkpointed past it and would grow for as long as the pager stays open."""
    database = dbmod.Database.open(sqlite_url)
    run_id = seed(database, spec, days=6 * BATCH // 7)  # 160 KB: twice a pipe and a buffer
    database.dispose()
    env = {**os.environ, "LOOPSIM_DATABASE_URL": sqlite_url}
    show = subprocess.Popen(
        [sys.executable, "-m", "loopsim", "record", "show", run_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert show.stdout is not None
        first = show.stdout.readline()  # it has read a page and printed it; now we stall
        assert first
        writer = sqlite3.connect(sqlite_url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            writer.execute("UPDATE runs SET name = name")
            writer.commit()
            busy, log, moved = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy == 0 and log == moved:
                break
            assert time.monotonic() < deadline, "a reader held its snapshot for 120 s"
            time.sleep(0.2)
        assert Path(f"{sqlite_url}-wal").stat().st_size == 0  # truncated: no reader pinned it
        assert show.poll() is None  # still blocked on the pipe, not finished
        writer.close()
        rest = show.stdout.read()
        assert show.wait(timeout=120) == 0
        headings = [line for line in (first + rest).splitlines() if " \u00b7 ".encode() in line]
        assert len(headings) == (6 * BATCH // 7) * 7 + 1  # every entry, the correction too
    finally:
        if show.poll() is None:
            show.kill()
            show.wait()


def test_export_to_a_file_is_whole_and_atomic(cli_factory, sqlite_url, spec, tmp_path):
    """Written as read: the file appears whole, with every entry, or not at all."""
    database = dbmod.Database.open(sqlite_url)
    run_id = seed(database, spec, days=BATCH // 7 + 20)
    database.dispose()
    cli = cli_factory(sqlite_url)
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "record.jsonl"
    result = cli("export", run_id, "-f", "jsonl", "--include-reverted", "-o", str(target))
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in target.read_text().splitlines()]
    entries = [r["seq"] for r in records if r["type"] == "entry"]
    assert entries == sorted(entries)
    assert len(entries) == (BATCH // 7 + 20) * 7 + 1
    assert [p.name for p in target.parent.iterdir()] == ["record.jsonl"]  # no temporary left


def seed_calls(database: dbmod.Database, spec: Any, days: int) -> str:
    """A record of ``days`` approved days, each with a report call (a failed attempt fed
    back, then an accepted one) carrying a prompt of about 2 KB, as a real day's do."""
    from loopsim.record.tables import CheckIn, utcnow
    from loopsim.researcher.conversation import Logged

    run_id = make_run(database, spec)
    prompt = [{"role": "user", "content": "Read the log and write today's report. " * 50}]
    with database.write() as session:
        store = Store(session)
        for index in range(1, days + 1):
            day = add_day(store, run_id, index)
            calls = [
                Logged(
                    1,
                    "day",
                    0,
                    attempt,
                    prompt,
                    f"reply {index}.{attempt}",
                    attempt == 2,
                    None if attempt == 2 else "not JSON",
                    "seed",
                    900,
                    40,
                    5,
                )
                for attempt in (1, 2)
            ]
            store.add_calls(day, calls, [])
        now = utcnow()
        session.add(
            CheckIn(
                run_id=run_id,
                reason="scheduled",
                first_day_index=1,
                last_day_index=days,
                decision="approve",
                opened_at=now,
                decided_at=now,
            )
        )
    return run_id


def _distil(database: dbmod.Database, run_id: str) -> int:
    from loopsim.exports.calls import calls_jsonl
    from loopsim.exports.dataset import to_dataset

    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        written = sum(1 for _ in to_dataset(store, run))
        return written + sum(1 for _ in calls_jsonl(store, run))


def test_dataset_and_calls_exports_hold_a_batch_not_the_run(any_url, spec):
    """A run's calls carry every prompt it sent: the dataset and `--calls` read them a
    batch at a time (a server-side cursor on PostgreSQL, beside a query a day), so peak
    memory stays flat from 2 batches of calls to 10."""
    database = dbmod.Database.open(any_url)
    small = seed_calls(database, spec, days=BATCH)  # 2 batches of calls
    large = seed_calls(database, spec, days=5 * BATCH)
    assert _distil(database, small) == BATCH * 3  # one example and two call lines a day
    found = {}
    for name, run_id in (("small", small), ("large", large)):
        _distil(database, run_id)
        found[name] = _peak(lambda: _distil(database, run_id))  # noqa: B023
    database.dispose()
    assert found["large"] < 2 * found["small"], found


def test_a_streamed_read_leaves_the_transaction_as_it_found_it(any_db, spec):
    """Batching is an option of the streamed statement alone: the statements after it in
    the same transaction (the check-ins an export writes next, say) read as usual."""
    run_id = seed(any_db, spec, days=3)
    with any_db.read() as session:
        store = Store(session)
        before = dict(session.connection().get_execution_options())
        days = list(store.days_with_entries(run_id))
        assert dict(session.connection().get_execution_options()) == before
        assert "yield_per" not in before
    assert [day.index for day, _entries in days] == [1, 2, 3, 3, 3]  # two failed tries of 3


def test_an_export_is_one_snapshot_while_a_day_commits(any_db, spec):
    """A day committed while an export is being written is not in it, on PostgreSQL
    too, whose default isolation would show each statement what was committed before it
    (and the HTML report's timeline and cards would then disagree)."""
    run_id = seed(any_db, spec, days=3)
    late = "A day committed while the export was written."
    with any_db.read(snapshot=True) as session:
        store = Store(session)
        run = store.get_run(run_id)
        html = html_chunks(store, run)  # the timeline is read here, the cards as written
        with any_db.write() as other:  # another connection, another transaction
            add_day(Store(other), run_id, 4, [EntryInput("note", "Late", late)])
        page = "".join(html)
        lines = list(to_jsonl(store, run))
    assert "Day 3" in page
    assert late not in page
    assert not any(late in line for line in lines)
    with any_db.read(snapshot=True) as session:
        store = Store(session)
        assert late in "".join(html_chunks(store, store.get_run(run_id)))


def test_a_day_written_before_calls_were_recorded_still_gives_its_example(any_db, spec):
    """Such a day has no calls: its example comes from its own prompt and raw reply,
    which the streamed days leave unloaded until read, a query issued while the days'
    and the calls' batched reads are both open (two server-side cursors on PostgreSQL)."""
    from sqlalchemy import update

    from loopsim.exports.dataset import to_dataset
    from loopsim.record.tables import CheckIn, Day

    run_id = seed_calls(any_db, spec, days=3)
    prompt = [{"role": "user", "content": "An old day's prompt."}]
    with any_db.write() as session:
        store = Store(session)
        old = add_day(store, run_id, 4)
        session.execute(
            update(Day).where(Day.id == old.id).values(prompt=prompt, raw_output="Old reply.")
        )
        session.execute(update(CheckIn).where(CheckIn.run_id == run_id).values(last_day_index=4))
    with any_db.read(snapshot=True) as session:
        store = Store(session)
        records = [json.loads(line) for line in to_dataset(store, store.get_run(run_id))]
    assert [r["metadata"]["day_index"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["messages"] == [*prompt, {"role": "assistant", "content": "Old reply."}]
    assert records[0]["messages"][-1]["content"] == "reply 1.2"  # the accepted attempt


@pytest.mark.parametrize("batch", [BATCH, 1])
def test_record_show_puts_failed_tries_beside_their_day(
    cli_factory, sqlite_url, spec, monkeypatch, batch
):
    """Failed tries were printed after the last day, all of them; each now comes before
    the day at its index, as in the exports, and is read a page at a time."""
    database = dbmod.Database.open(sqlite_url)
    run_id = seed(database, spec, days=8, per_day=2)
    database.dispose()
    monkeypatch.setattr("loopsim.cli.record.BATCH", batch)  # 1: a page a failed try
    cli = cli_factory(sqlite_url, None)
    days = [line for line in cli("record", "show", run_id).stdout.splitlines() if "day" in line]
    assert days == [
        "day 1  2025-06-02",
        "day 2  2025-06-02",
        "day 3  failed after 1 attempt: bad 0",
        "day 3  failed after 1 attempt: bad 1",
        "day 3  2025-06-02",
        "day 4  2025-06-02",
        "day 5  2025-06-02  [reverted]",
        "day 6  2025-06-02  [reverted]",
        "day 7  2025-06-02",
        "day 8  2025-06-02",
        "outside any day",
    ]
    one = [line for line in cli("record", "show", run_id, "--day", "3").stdout.splitlines()]
    assert [line for line in one if "day" in line] == days[2:5]
    assert one[0].startswith("day 3  failed")
    database = dbmod.Database.open(sqlite_url)
    with database.read() as session:
        store = Store(session)
        every = store.failed_page(run_id)
        paged = store.failed_page(run_id, limit=1)
        paged += store.failed_page(run_id, (paged[-1].index, paged[-1].id), limit=1)
    database.dispose()
    assert [t.error for t in every] == [t.error for t in paged] == ["bad 0", "bad 1"]
