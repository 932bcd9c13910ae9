"""Digests: the entries that compress a run's days (level 1) and digests (level k+1).

A view pins the digests no higher level covers: together they tile every digested day
once (:meth:`DigestQueries.pinned_digests`). The queries here read each level's reach with
one indexed probe per level, so no day's cost grows with the record.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Date, Integer, String, bindparam, func, literal, or_, select, union_all

from loopsim.errors import NotFound
from loopsim.record.entries import EntryInput, EntryQueries
from loopsim.record.tables import Day, Entry
from loopsim.schemas import Author, DayStatus, EntryKind


class DigestRow(NamedTuple):
    """A digest as the view and the planner read it: a plain row, not an ORM object
    (a plan reads every uncovered digest, twice, and loading each as an object cost more
    than the queries)."""

    id: int
    seq: int
    level: int | None
    first_day: int | None
    last_day: int | None
    external_date: dt.date
    kind: str
    author: str
    title: str
    body: str


DIGEST_COLUMNS = (
    Entry.id,
    Entry.seq,
    Entry.level,
    Entry.first_day,
    Entry.last_day,
    Entry.external_date,
    Entry.kind,
    Entry.author,
    Entry.title,
    Entry.body,
)


@dataclass(frozen=True)
class DigestState:
    """What the digests of a run cover: ``covered`` maps each level to the last day its
    digests reach; ``uncovered`` lists, per level and oldest first, the digests no digest
    of the level above covers yet (one per range: a human's amendment stands)."""

    covered: dict[int, int]
    uncovered: dict[int, list[DigestRow]]
    complete: bool


_NO_DAY_LIMIT = 2**31 - 1


def _levels() -> Any:
    """Levels 1 to the run's highest digest level, as rows (level 1 alone if the run
    has no digest): the top is an indexed probe inside the same statement."""
    top = (
        select(func.max(Entry.level))
        .where(Entry.run_id == bindparam("run_id", type_=String), Entry.level.is_not(None))
        .scalar_subquery()
    )
    levels = select(literal(1, Integer).label("level")).cte("levels", recursive=True)
    return levels.union_all(select((levels.c.level + 1).label("level")).where(levels.c.level < top))


def _level_ends_statement() -> Any:
    """For each level the run has: the last day the newest visible digest of that level
    covers (written on or before day ``written_by``), None where none is visible. Built
    once: only the parameters change, so no day pays for building it, and each level is
    one indexed probe."""
    levels = _levels()
    end = (
        select(Entry.last_day)
        .outerjoin(Day, Entry.day_id == Day.id)
        .where(
            Entry.run_id == bindparam("run_id", type_=String),
            Entry.level == levels.c.level,
            Entry.kind == EntryKind.DIGEST.value,
            or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED.value),
            Entry.external_date <= bindparam("until", type_=Date),
            or_(Entry.day_id.is_(None), Day.index <= bindparam("written_by", type_=Integer)),
        )
        .order_by(Entry.last_day.desc())
        .limit(1)
        .correlate(levels)
        .scalar_subquery()
    )
    return select(levels.c.level, end.label("last_day"))


_LEVEL_ENDS = _level_ends_statement()


_BOUNDARIES = (
    select(Entry.last_day)
    .distinct()
    .outerjoin(Day, Entry.day_id == Day.id)
    .where(
        Entry.run_id == bindparam("run_id", type_=String),
        Entry.kind == EntryKind.DIGEST.value,
        Entry.level == 1,
        or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED.value),
        Entry.external_date <= bindparam("until", type_=Date),
    )
    .order_by(Entry.last_day.desc())
    .limit(bindparam("limit", type_=Integer))
)


@functools.lru_cache(maxsize=16)
def _uncovered_statement(levels: int) -> Any:
    """The visible digests of levels 1..``levels`` that start after ``after_<level>`` (the
    reach of the level above): one index range per level. An OR over the levels would
    make the database read every digest of the run. The ids drive the outer query; with
    the run and kind there too, the database would rather walk the run's digests in
    index order than sort a few. Built once per number of levels."""
    ids = union_all(
        *(
            select(Entry.id).where(
                Entry.run_id == bindparam("run_id", type_=String),
                Entry.level == level,
                Entry.first_day > bindparam(f"after_{level}", type_=Integer),
            )
            for level in range(1, levels + 1)
        )
    )
    return (
        select(*DIGEST_COLUMNS)
        .outerjoin(Day, Entry.day_id == Day.id)
        .where(Entry.id.in_(ids), Entry.kind == EntryKind.DIGEST.value)
        .where(
            or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED.value),
            Entry.external_date <= bindparam("until", type_=Date),
            or_(Entry.day_id.is_(None), Day.index <= bindparam("written_by", type_=Integer)),
        )
        .order_by(Entry.level, Entry.first_day, Entry.seq.desc())
        .limit(bindparam("limit", type_=Integer))
    )


class DigestQueries(EntryQueries):
    """What the digests of a run cover, which of them a view pins, and a human's amendment."""

    def _digest_rows(self, run_id: str, until: dt.date, written_by: int | None = None) -> Any:
        stmt = (
            select(*DIGEST_COLUMNS)
            .outerjoin(Day, Entry.day_id == Day.id)
            .where(Entry.run_id == run_id)
            .where(Entry.kind == EntryKind.DIGEST, Entry.level.is_not(None))
            .where(self._visible(), Entry.external_date <= until)
        )
        if written_by is not None:
            stmt = stmt.where(or_(Entry.day_id.is_(None), Day.index <= written_by))
        return stmt

    def digests(
        self,
        run_id: str,
        level: int,
        *,
        after_day: int,
        until: dt.date,
        limit: int = 50,
        written_by: int | None = None,
    ) -> list[DigestRow]:
        """Visible digests of ``level`` starting after ``after_day``, oldest range first
        (only those written on or before day ``written_by``, if given). Of several digests
        of one range (a human amended it), the newest stands."""
        stmt = (
            self._digest_rows(run_id, until, written_by)
            .where(Entry.level == level, Entry.first_day > after_day)
            .order_by(Entry.first_day, Entry.seq.desc())
            .limit(limit * 4)
        )
        chosen: dict[tuple[int | None, int | None], DigestRow] = {}
        for row in self._rows(stmt, {}):
            digest = DigestRow(*row)
            chosen.setdefault((digest.first_day, digest.last_day), digest)
        return list(chosen.values())[:limit]

    def _level_ends(self, run_id: str, until: dt.date, written_by: int | None) -> dict[int, int]:
        """The last day each level's visible digests reach: one prepared statement, one
        indexed probe per level (newest range first), however many digests there are."""
        rows = self._rows(
            _LEVEL_ENDS,
            {
                "run_id": run_id,
                "until": until,
                "written_by": _NO_DAY_LIMIT if written_by is None else written_by,
            },
        )
        return {int(level): int(end) for level, end in rows if end is not None}

    def digest_state(
        self, run_id: str, until: dt.date, written_by: int | None = None, limit: int = 400
    ) -> DigestState:
        """Each level's last covered day and its digests no higher level covers yet, in
        two queries however many levels there are. ``complete`` is False if ``limit``
        cut the second query short."""
        covered = self._level_ends(run_id, until, written_by)
        uncovered: dict[int, list[DigestRow]] = {level: [] for level in covered}
        if not covered:
            return DigestState(covered, uncovered, True)
        top = max(covered)
        params: dict[str, Any] = {
            "run_id": run_id,
            "until": until,
            "written_by": _NO_DAY_LIMIT if written_by is None else written_by,
            "limit": limit + 1,
        }
        params.update({f"after_{level}": covered.get(level + 1, 0) for level in range(1, top + 1)})
        # Parameters at execution, not ``.params()``: a copy of the statement would have
        # its cache key computed afresh on every call.
        found = self._rows(_uncovered_statement(top), params)
        seen: set[tuple[int | None, int | None, int | None]] = set()
        for row in found[:limit]:
            entry = DigestRow(*row)
            key = (entry.level, entry.first_day, entry.last_day)
            if key not in seen:  # of several digests of one range, the newest stands
                seen.add(key)
                uncovered[entry.level or 0].append(entry)
        return DigestState(covered, uncovered, len(found) <= limit)

    def pinned_digests(
        self,
        run_id: str,
        until: dt.date,
        *,
        before_day: int | None = None,
        written_by: int | None = None,
        per_level: int = 50,
        state: DigestState | None = None,
    ) -> list[DigestRow]:
        """The digests no higher-level digest covers, oldest range first: together they
        cover every digested day (before ``before_day``, if given) once. A level holds
        fewer than ``every_days`` of them (more would have been compressed), so this
        stays short however long the record. ``written_by`` keeps only the digests written
        on or before that day: the tiling as it stood then, which later digests (a level
        compressing the one below) do not change. ``state``, if given, must be
        ``digest_state`` of the same run, date and ``written_by``."""
        if state is None:  # a caller may pass the state it already read for this date
            state = self.digest_state(run_id, until, written_by)
        pinned: list[DigestRow] = []
        covered = 0
        for level in range(max(state.covered, default=0), 0, -1):
            if state.complete and covered == state.covered.get(level + 1, 0):
                # The usual case: the levels above tiled all they cover, so what follows
                # them at this level is exactly what no higher level covers.
                found = state.uncovered.get(level, [])[:per_level]
            else:
                found = self.digests(
                    run_id,
                    level,
                    after_day=covered,
                    until=until,
                    limit=per_level,
                    written_by=written_by,
                )
            run: list[DigestRow] = []
            for digest in found:  # contiguous from ``covered``, stopping at the window
                if digest.first_day != covered + 1 and (run or covered):
                    break
                if before_day is not None and (digest.last_day or 0) >= before_day:
                    break
                run.append(digest)
                covered = digest.last_day or covered
            pinned.extend(run)
        return sorted(pinned, key=lambda d: d.first_day or 0)

    def digest_boundaries(self, run_id: str, until: dt.date, limit: int = 64) -> list[int]:
        """Days just after a visible level-1 digest ends, newest first: where the view's
        raw window may start so that digests tile every day before it."""
        params = {"run_id": run_id, "until": until, "limit": limit}
        return [int(row[0]) + 1 for row in self._rows(_BOUNDARIES, params)]

    def amend_digest(self, run_id: str, seq: int, body: str) -> Entry:
        """A human's version of a digest: a new entry of the same level and range, in the
        same day (so it is reverted with it), that stands in the view from now on."""
        original = self.session.scalar(
            select(Entry).where(Entry.run_id == run_id, Entry.seq == seq)
        )
        if original is None or original.kind != EntryKind.DIGEST or original.level is None:
            raise NotFound(f"run {run_id} has no digest #{seq}; `loopsim record show` lists them")
        day = self.session.get(Day, original.day_id) if original.day_id is not None else None
        (entry,) = self.append_entries(
            run_id,
            [
                EntryInput(
                    EntryKind.DIGEST,
                    original.title
                    if original.title.endswith("(amended)")
                    else f"{original.title[:108]} (amended)",
                    body,
                    author=Author.HUMAN,
                    parent_id=original.id,
                    level=original.level,
                    first_day=original.first_day,
                    last_day=original.last_day,
                )
            ],
            day=day,
            external_date=original.external_date,
        )
        return entry
