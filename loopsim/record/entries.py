"""Entries: what a run's researcher (or a human) wrote, appended to the run's chain.

:meth:`EntryQueries.append_entries` is the only code that writes an entry: it sets each
one's ``seq``, ``prev_hash`` and hash (:func:`loopsim.record.chain.entry_hash`).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from sqlalchemy import Date, Integer, String, Table, bindparam, insert, or_, select

from loopsim.errors import RecordBroken
from loopsim.record.base import one_of
from loopsim.record.chain import GENESIS, KEYED_HINT, ChainQueries, chain_genesis, entry_hash
from loopsim.record.tables import Day, Entry, utcnow
from loopsim.schemas import Author, DayStatus, EntryKind


@dataclass(frozen=True)
class EntryInput:
    kind: str
    title: str
    body: str
    author: str = Author.RESEARCHER
    parent_id: int | None = None
    # The parent as an index into the same batch, for trees written in one go.
    parent: int | None = None
    level: int | None = None
    first_day: int | None = None
    last_day: int | None = None
    score: int | None = None
    flagged: bool | None = None


class EntryText(NamedTuple):
    """What the check-in tests read of an entry, as a plain row (no ORM object)."""

    seq: int
    title: str
    body: str
    external_date: dt.date
    day_index: int | None
    status: str | None


# What a view shows of an entry, in :class:`loopsim.researcher.view.ViewEntry`'s order.
VIEW_COLUMNS = (
    Entry.seq,
    Day.index,
    Entry.external_date,
    Entry.kind,
    Entry.author,
    Entry.title,
    Entry.body,
    Entry.first_day,
    Entry.last_day,
)


_RUN = Entry.run_id == bindparam("run_id", type_=String)
_VISIBLE = or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED.value)
_UNTIL = Entry.external_date <= bindparam("until", type_=Date)

# The statements a day runs, built once (building one costs about as much as running it).
# Only committed and reverted days hold entries (a failed day wrote none). Saying so lets
# the database read a day range off the index on (run, status, index); without a status,
# SQLite walked that index over every day of the run.
_DAYS_WITH_ENTRIES = one_of(Day.status, (DayStatus.COMMITTED.value, DayStatus.REVERTED.value))
_ENTRY_TEXTS = (
    select(Entry.seq, Entry.title, Entry.body, Entry.external_date, Day.index, Day.status)
    .join(Day, Entry.day_id == Day.id)
    .where(
        Day.run_id == bindparam("run_id", type_=String),
        Day.index.between(bindparam("first", type_=Integer), bindparam("last", type_=Integer)),
        _DAYS_WITH_ENTRIES,
    )
    .order_by(Entry.seq)
)
_COMMITTED_VIEW_ROWS = (
    select(*VIEW_COLUMNS)
    .join(Day, Entry.day_id == Day.id)
    .where(
        Day.run_id == bindparam("run_id", type_=String),
        Day.index.between(bindparam("first", type_=Integer), bindparam("last", type_=Integer)),
        Day.status == DayStatus.COMMITTED.value,
    )
    .order_by(Entry.seq)
)
_CORRECTIONS = (
    select(*VIEW_COLUMNS)
    .outerjoin(Day, Entry.day_id == Day.id)
    .where(_RUN, _VISIBLE, _UNTIL)
    .where(Entry.kind == EntryKind.CORRECTION.value, Entry.author == Author.HUMAN.value)
    .order_by(Entry.seq.desc())
    .limit(bindparam("limit", type_=Integer))
)


@functools.cache
def _recent_statement(before_seq: bool, after_day: bool) -> Any:
    stmt = (
        select(*VIEW_COLUMNS)
        .outerjoin(Day, Entry.day_id == Day.id)
        .where(_RUN, _VISIBLE, _UNTIL)
        .where(~one_of(Entry.kind, (EntryKind.DIGEST.value, EntryKind.CORRECTION.value)))
        .order_by(Entry.seq.desc())
        .limit(bindparam("limit", type_=Integer))
    )
    if before_seq:
        stmt = stmt.where(Entry.seq < bindparam("before_seq", type_=Integer))
    if after_day:
        stmt = stmt.where(
            or_(Entry.day_id.is_(None), Day.index > bindparam("after_day", type_=Integer))
        )
    return stmt


_ENTRY_TABLE = cast(Table, Entry.__table__)
_ENTRY_COLUMNS = [column.key for column in _ENTRY_TABLE.columns if column.key != "id"]
# Each new id comes back with its seq, unique within the batch's run, to pair them: asked
# to return rows in the batch's order instead, SQLAlchemy inserts on SQLite row by row.
_INSERT_ENTRIES = insert(_ENTRY_TABLE).returning(_ENTRY_TABLE.c.seq, _ENTRY_TABLE.c.id)


class EntryQueries(ChainQueries):
    """Appending entries, and listing them by day, page or kind."""

    def entry_seqs(self, run_id: str) -> dict[int, int]:
        """Entry id -> seq for a run, held whole in memory: for a few entries (the
        exports join each parent's seq in instead, see :mod:`loopsim.record.streams`)."""
        rows = self.session.execute(select(Entry.id, Entry.seq).where(Entry.run_id == run_id))
        return {entry_id: seq for entry_id, seq in rows}

    def append_entries(
        self,
        run_id: str,
        items: Sequence[EntryInput],
        *,
        day: Day | None,
        external_date: dt.date,
        model_id: str | None = None,
        model_version: str | None = None,
        prompt_hash: str | None = None,
    ) -> list[Entry]:
        """Append entries to the run's chain. Ids and hashes are set before returning;
        the entries returned are not in the session (see :meth:`_insert_entries`).

        An item's ``parent`` names an earlier item of the same batch; the parent is
        inserted first so its id, which the child's hash covers, is known."""
        seq, prev = self.chain_head(run_id)
        key = self._append_key(run_id, seq)
        if seq == 0:
            prev = chain_genesis(run_id, key)
        now = utcnow()
        created: list[Entry] = []
        unsent: list[Entry] = []
        for position, item in enumerate(items):
            seq += 1
            parent_id = item.parent_id
            if item.parent is not None:
                if not 0 <= item.parent < position:
                    raise ValueError(f"entry {position} names parent {item.parent}, not before it")
                if created[item.parent].id is None:
                    self._insert_entries(unsent)  # the child's hash covers its parent's id
                parent_id = created[item.parent].id
            entry = Entry(
                run_id=run_id,
                day_id=day.id if day is not None else None,
                parent_id=parent_id,
                seq=seq,
                kind=item.kind,
                title=item.title,
                body=item.body,
                author=item.author,
                model_id=model_id,
                model_version=model_version,
                prompt_hash=prompt_hash,
                external_date=external_date,
                created_at=now,
                prev_hash=prev,
                hash="",
                level=item.level,
                first_day=item.first_day,
                last_day=item.last_day,
                score=item.score,
                flagged=item.flagged,
            )
            entry.hash = entry_hash(entry, day.index if day is not None else None, key)
            prev = entry.hash
            unsent.append(entry)
            created.append(entry)
        self._insert_entries(unsent)
        return created

    def _insert_entries(self, entries: list[Entry]) -> None:
        """Insert ``entries`` in one statement and set their ids; empties the list. The
        objects stay outside the session: a Core insert costs a fraction of the ORM's
        flush, and nothing changes an entry once it is written."""
        if not entries:
            return
        rows = [{name: getattr(entry, name) for name in _ENTRY_COLUMNS} for entry in entries]
        ids = {int(seq): int(id_) for seq, id_ in self._core().execute(_INSERT_ENTRIES, rows)}
        for entry in entries:
            entry.id = ids[entry.seq]
        entries.clear()

    def _append_key(self, run_id: str, head_seq: int) -> bytes | None:
        """The key to extend the run's chain with: this process's chain key for a new or
        keyed chain, none for a plain one. A keyed chain is never extended without its key
        (or with another), which would break it."""
        key = self.chain_key
        if head_seq == 0:
            return key
        genesis = self.first_prev_hash(run_id)
        if genesis is None or genesis == GENESIS:
            return None
        if key is None:
            raise RecordBroken(f"run {run_id}: {KEYED_HINT} to extend it")
        if genesis != chain_genesis(self.genesis_run_id(run_id), key):
            raise RecordBroken(
                f"run {run_id}: LOOPSIM_CHAIN_KEY is not the key this run's chain was keyed "
                f"with; `loopsim record verify {run_id}` checks it"
            )
        return key

    def list_entries(
        self,
        run_id: str,
        *,
        day_index: int | None = None,
        day_range: tuple[int, int] | None = None,
        include_reverted: bool = True,
    ) -> list[tuple[Entry, int | None, str | None]]:
        if day_index is not None or day_range is not None:
            # Inner join, so the database can start from the few days asked for (by their
            # run and index) rather than walk every entry of the run.
            stmt = (
                select(Entry, Day.index, Day.status)
                .join(Day, Entry.day_id == Day.id)
                .where(Day.run_id == run_id)
                .order_by(Entry.seq)
            )
            if day_index is not None:
                stmt = stmt.where(Day.index == day_index, _DAYS_WITH_ENTRIES)
            if day_range is not None:
                stmt = stmt.where(Day.index.between(*day_range), _DAYS_WITH_ENTRIES)
        else:
            stmt = self._entries_with_day(run_id).order_by(Entry.seq)
        if not include_reverted:
            stmt = stmt.where(self._visible())
        return [(e, idx, status) for e, idx, status in self.session.execute(stmt)]

    def entry_texts(self, run_id: str, day_range: tuple[int, int]) -> list[EntryText]:
        """:meth:`list_entries` over ``day_range`` (reverted days included), as plain rows
        of the few columns the check-in tests read: the days' entries are many, and
        loading each as an ORM object cost more than the query."""
        first, last = day_range
        rows = self._rows(_ENTRY_TEXTS, {"run_id": run_id, "first": first, "last": last})
        return [EntryText(*row) for row in rows]

    def committed_view_rows(self, run_id: str, day_range: tuple[int, int]) -> list[Any]:
        """The entries of the committed days in ``day_range``, oldest first, as plain
        rows of :data:`VIEW_COLUMNS`: what a digest of those days compresses."""
        first, last = day_range
        return list(
            self._rows(_COMMITTED_VIEW_ROWS, {"run_id": run_id, "first": first, "last": last})
        )

    def pinned_corrections(self, run_id: str, until: dt.date, limit: int = 50) -> list[Any]:
        """Human corrections, oldest first, as plain rows of :data:`VIEW_COLUMNS`: every
        view includes them."""
        params = {"run_id": run_id, "until": until, "limit": limit}
        return list(reversed(self._rows(_CORRECTIONS, params)))

    def recent_entries(
        self,
        run_id: str,
        until: dt.date,
        *,
        before_seq: int | None = None,
        limit: int = 50,
        after_day: int = 0,
    ) -> list[tuple[Any, ...]]:
        """Newest visible research entries first, one page at a time; only days after
        ``after_day`` (and entries outside any day). Plain rows of :data:`VIEW_COLUMNS`
        (seq, day index, ...): a view reads pages of them every day, and ORM objects
        cost more to load than the query to run."""
        stmt = _recent_statement(before_seq is not None, bool(after_day))
        params = {
            "run_id": run_id,
            "until": until,
            "limit": limit,
            "before_seq": before_seq,
            "after_day": after_day,
        }
        return list(self._rows(stmt, params))
