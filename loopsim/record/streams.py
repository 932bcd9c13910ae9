"""Reading a whole record in constant memory: what exports and ``record show`` read.

A run that has stepped for weeks holds 10^5 entries or more. Loading them all as ORM
objects, then grouping them in dicts, cost about 3 KB and 50 µs an entry (330 MB and
5 s for an export of 10^5 entries). Here they come as plain rows, a batch at a time:

- :meth:`StreamQueries.days_with_entries` walks the run's days in order, each with its
  entries, through one query whose cursor is read in batches (a server-side cursor on
  PostgreSQL). An export writes as it reads, inside one read transaction opened with
  ``Database.read(snapshot=True)``, so the file is one consistent snapshot of the record.
- :meth:`StreamQueries.entry_page` reads entries by ``seq`` after a given one: a reader
  that shows the record to a person takes each page in a read transaction of its own, so
  a pager left open holds no snapshot (SQLite's WAL could not be checkpointed past it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, cast

from sqlalchemy import Integer, String, Table, and_, bindparam, func, or_, select
from sqlalchemy.orm import defer

from loopsim.record.base import StoreBase
from loopsim.record.tables import Day, Entry
from loopsim.schemas import DayStatus

BATCH = 500
"""Rows a streamed read holds at once."""


class EntryRow(NamedTuple):
    """An entry as exports and ``record show`` read it: its columns, and its parent's
    ``seq`` (None when it has no parent) in place of the parent's id alone."""

    id: int
    run_id: str
    day_id: int | None
    seq: int
    kind: str
    author: str
    title: str
    body: str
    external_date: dt.date
    created_at: dt.datetime
    model_id: str | None
    model_version: str | None
    prompt_hash: str | None
    prev_hash: str
    hash: str
    parent_id: int | None
    parent_seq: int | None
    level: int | None
    first_day: int | None
    last_day: int | None
    score: int | None
    flagged: bool | None


@dataclass(frozen=True, slots=True)
class DayRow:
    """A day as exports read it: everything but its prompt and raw reply. (A dataclass:
    a tuple's own ``index`` method would shadow the field.)"""

    id: int
    index: int
    external_date: dt.date
    status: str
    model_id: str
    model_version: str
    prompt_hash: str
    attempts: int
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: int | None
    error: str | None


class PagedEntry(NamedTuple):
    """An entry of :meth:`StreamQueries.entry_page`, with its day's index, status and
    date (None for an entry outside any day)."""

    entry: EntryRow
    day_index: int | None
    day_status: str | None
    day_date: dt.date | None


@dataclass(frozen=True, slots=True)
class FailedTry:
    """A failed try as :meth:`StreamQueries.failed_page` reads it (a dataclass, as
    :class:`DayRow` is)."""

    id: int
    index: int
    attempts: int
    error: str | None


_E = cast(Table, Entry.__table__)
_D = cast(Table, Day.__table__)
_PARENT = _E.alias("parent")
_ENTRY_COLUMNS = [
    _PARENT.c.seq.label("parent_seq") if name == "parent_seq" else _E.c[name]
    for name in EntryRow._fields
]
_DAY_FIELDS = [f.name for f in fields(DayRow)]
_DAY_COLUMNS = [_D.c[name].label(f"day_{name}") for name in _DAY_FIELDS]
_WITH_PARENT = _E.outerjoin(
    _PARENT, and_(_PARENT.c.id == _E.c.parent_id, _PARENT.c.run_id == _E.c.run_id)
)
_RUN_ID = bindparam("run_id", type_=String)


def _days_with_entries(include_reverted: bool) -> Any:
    # Every day, each followed by its entries by seq: a day without entries (a failed
    # try) comes as one row whose entry columns are null.
    joined = _D.outerjoin(_WITH_PARENT, _E.c.day_id == _D.c.id)
    stmt = (
        select(*_DAY_COLUMNS, *_ENTRY_COLUMNS)
        .select_from(joined)
        .where(_D.c.run_id == _RUN_ID)
        .order_by(_D.c.index, _D.c.id, _E.c.seq)
    )
    if not include_reverted:
        stmt = stmt.where(_D.c.status != DayStatus.REVERTED.value)
    return stmt


_DAYS_WITH_ENTRIES = {flag: _days_with_entries(flag) for flag in (False, True)}
# Grouped by the day's key alone: its other columns depend on it (PostgreSQL allows that).
_DAYS_WITH_COUNTS = (
    select(*_DAY_COLUMNS, func.count(_E.c.id))
    .select_from(_D.outerjoin(_E, _E.c.day_id == _D.c.id))
    .where(_D.c.run_id == _RUN_ID)
    .group_by(_D.c.id)
    .order_by(_D.c.index, _D.c.id)
)
_OUTSIDE = (
    select(*_ENTRY_COLUMNS)
    .select_from(_WITH_PARENT)
    .where(_E.c.run_id == _RUN_ID, _E.c.day_id.is_(None))
    .order_by(_E.c.seq)
)
_REVERTED = (
    select(_D.c.index)
    .where(_D.c.run_id == _RUN_ID, _D.c.status == DayStatus.REVERTED.value)
    .order_by(_D.c.index)
)
_AFTER_TRY = bindparam("after_index", type_=Integer)
_FAILED_PAGE = (
    select(_D.c.id, _D.c.index, _D.c.attempts, _D.c.error)
    .where(
        _D.c.run_id == _RUN_ID,
        _D.c.status == DayStatus.FAILED.value,
        or_(
            _D.c.index > _AFTER_TRY,
            and_(_D.c.index == _AFTER_TRY, _D.c.id > bindparam("after_id", type_=Integer)),
        ),
    )
    .order_by(_D.c.index, _D.c.id)
    .limit(bindparam("limit", type_=Integer))
)
_PAGE_COLUMNS = (*_ENTRY_COLUMNS, _D.c.index, _D.c.status, _D.c.external_date)
_AFTER = _E.c.seq > bindparam("after", type_=Integer)
_LIMIT = bindparam("limit", type_=Integer)
_PAGE = {
    False: select(*_PAGE_COLUMNS)
    .select_from(_WITH_PARENT.outerjoin(_D, _E.c.day_id == _D.c.id))
    .where(_E.c.run_id == _RUN_ID, _AFTER)
    .order_by(_E.c.seq)
    .limit(_LIMIT),
    # One day's: from the day (by its run and index), as the database can start there.
    True: select(*_PAGE_COLUMNS)
    .select_from(_WITH_PARENT.join(_D, _E.c.day_id == _D.c.id))
    .where(_D.c.run_id == _RUN_ID, _D.c.index == bindparam("day_index", type_=Integer), _AFTER)
    .order_by(_E.c.seq)
    .limit(_LIMIT),
}
_N_DAY = len(_DAY_FIELDS)


class StreamQueries(StoreBase):
    """A run's whole record, read in batches of plain rows."""

    def days_with_entries(
        self, run_id: str, *, include_reverted: bool = False
    ) -> Iterator[tuple[DayRow, list[EntryRow]]]:
        """Each of the run's days in order (index, then id: failed tries first), with its
        entries by seq; reverted days and their entries only with ``include_reverted``.
        Rows are read :data:`BATCH` at a time: the caller holds one day's entries."""
        # The option goes with this statement: set on the connection, it would stay for
        # every later statement of the transaction.
        rows = self._core().execute(
            _DAYS_WITH_ENTRIES[include_reverted],
            {"run_id": run_id},
            execution_options={"yield_per": BATCH},
        )
        day: DayRow | None = None
        entries: list[EntryRow] = []
        for row in rows:
            if day is None or row[0] != day.id:
                if day is not None:
                    yield day, entries
                day, entries = DayRow(*row[:_N_DAY]), []
            if row[_N_DAY] is not None:  # the entry's id: null for a day without entries
                entries.append(EntryRow(*row[_N_DAY:]))
        if day is not None:
            yield day, entries

    def days_with_counts(self, run_id: str) -> list[tuple[DayRow, int]]:
        """Each of the run's days in the order of :meth:`days_with_entries` (reverted
        ones included), with how many entries it holds."""
        rows = self._rows(_DAYS_WITH_COUNTS, {"run_id": run_id})
        return [(DayRow(*row[:_N_DAY]), row[_N_DAY]) for row in rows]

    def outside_entries(self, run_id: str) -> list[EntryRow]:
        """Entries outside any day (a human's correction written at a check-in), by seq."""
        return [EntryRow(*row) for row in self._rows(_OUTSIDE, {"run_id": run_id})]

    def reverted_indexes(self, run_id: str) -> list[int]:
        """The indexes of the run's reverted days, in order: what an export that leaves
        them out says it left out."""
        return [row[0] for row in self._rows(_REVERTED, {"run_id": run_id})]

    def entry_page(
        self, run_id: str, after_seq: int, limit: int = BATCH, *, day_index: int | None = None
    ) -> list[PagedEntry]:
        """Up to ``limit`` entries with a seq above ``after_seq``, by seq, each with its
        day (reverted days included); only day ``day_index``'s when given."""
        params = {"run_id": run_id, "after": after_seq, "limit": limit, "day_index": day_index}
        rows = self._rows(_PAGE[day_index is not None], params)
        return [PagedEntry(EntryRow(*row[:-3]), *row[-3:]) for row in rows]

    def failed_page(
        self, run_id: str, after: tuple[int, int] = (0, 0), limit: int = BATCH
    ) -> list[FailedTry]:
        """Up to ``limit`` of the run's failed tries after ``after`` (an index and a day
        id), by index, then in the order tried: a reader that shows them beside their
        index takes them a page at a time, as it takes the entries."""
        params = {"run_id": run_id, "after_index": after[0], "after_id": after[1], "limit": limit}
        return [FailedTry(*row) for row in self._rows(_FAILED_PAGE, params)]

    def iter_days(self, run_id: str) -> Iterator[Day]:
        """:meth:`~loopsim.record.days.DayQueries.list_days`, read :data:`BATCH` at a
        time; a day's prompt and raw reply are loaded only if read (each is as long as
        a prompt). What the dataset export walks."""
        stmt = (
            select(Day)
            .where(Day.run_id == run_id)
            .order_by(Day.index, Day.id)
            .options(defer(Day.prompt), defer(Day.raw_output))
            .execution_options(yield_per=BATCH)
        )
        yield from self.session.scalars(stmt)
