"""Days: one per step of a run, committed, failed or reverted.

Day indices are dense over the days that hold one: each committed day takes the next
index (:meth:`DayQueries.next_day_index`, unique per run among days that are not
failed) and no day is ever deleted; a human's rejection marks days reverted, and their
entries and indices stay. A failed day is a try that wrote nothing: it is kept, with its
reply, error, attempts and latency, at the index it tried, and the next try of that day
reuses the index.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.orm import aliased, defer

from loopsim.errors import NotFound
from loopsim.record.base import StoreBase, one_of
from loopsim.record.tables import CallRecord, Day
from loopsim.schemas import CallRole, DayStatus


class Usage(NamedTuple):
    tokens_in: int
    tokens_out: int
    latency_ms: int


def _others_statement() -> Any:
    """Reverted days, and failed days whose index no other day holds, in
    (``after``, ``last``]: what :meth:`DayQueries.committed_days_after` subtracts. Built
    once (the alias and its correlated subquery cost more to build than to run)."""
    holder = aliased(Day)
    same = (holder.run_id == Day.run_id) & (holder.index == Day.index)
    held = select(holder.id).where(same, holder.status != DayStatus.FAILED).exists()
    return (
        select(func.count())
        .select_from(Day)
        .where(
            Day.run_id == bindparam("run_id", type_=String),
            Day.index > bindparam("after", type_=Integer),
            Day.index <= bindparam("last", type_=Integer),
            # The IN as well as the OR: with it the index on (run, status, index) gives
            # two short ranges; with the OR alone SQLite read every day of the run.
            one_of(Day.status, (DayStatus.REVERTED.value, DayStatus.FAILED.value)),
            or_(
                Day.status == DayStatus.REVERTED.value,
                and_(Day.status == DayStatus.FAILED.value, ~held),
            ),
        )
    )


_OTHERS = _others_statement()
_DAY_TABLE = cast(Table, Day.__table__)
_DAY_COLUMNS = [column.key for column in _DAY_TABLE.columns if column.key != "id"]
_INSERT_DAY = insert(_DAY_TABLE).returning(_DAY_TABLE.c.id)
_LAST_HELD = select(func.max(Day.index)).where(
    Day.run_id == bindparam("run_id", type_=String), Day.status != DayStatus.FAILED.value
)
_LAST_COMMITTED = select(func.max(Day.index)).where(
    Day.run_id == bindparam("run_id", type_=String), Day.status == DayStatus.COMMITTED.value
)
_COMMITTED_INDEXES = (
    select(Day.index)
    .where(
        Day.run_id == bindparam("run_id", type_=String),
        Day.status == DayStatus.COMMITTED.value,
        Day.index > bindparam("after", type_=Integer),
        Day.index < bindparam("before", type_=Integer),
    )
    .order_by(Day.index)
    .limit(bindparam("limit", type_=Integer))
)


@functools.cache
def _count_statement(by_status: bool, by_index: bool) -> Any:
    stmt = select(func.count()).select_from(Day).where(Day.run_id == bindparam("run_id", String))
    if by_status:
        stmt = stmt.where(Day.status == bindparam("status", type_=String))
    if by_index:
        stmt = stmt.where(Day.index == bindparam("index", type_=Integer))
    return stmt


class RunTally(NamedTuple):
    """A run's days counted by status, its next day's index, and what its calls cost
    (:meth:`DayQueries.usage`)."""

    committed: int = 0
    failed: int = 0
    reverted: int = 0
    next_day: int = 1
    usage: Usage = Usage(0, 0, 0)


def _by_status(status: DayStatus) -> Any:
    return func.coalesce(func.sum(case((Day.status == status.value, 1), else_=0)), 0)


_TALLY_DAYS = select(
    Day.run_id,
    _by_status(DayStatus.COMMITTED),
    _by_status(DayStatus.FAILED),
    _by_status(DayStatus.REVERTED),
    func.max(case((Day.status != DayStatus.FAILED.value, Day.index))),
    func.coalesce(func.sum(Day.tokens_in), 0),
    func.coalesce(func.sum(Day.tokens_out), 0),
    func.coalesce(func.sum(Day.latency_ms), 0),
).group_by(Day.run_id)
_TALLY_PROBES = (
    select(
        CallRecord.run_id,
        func.coalesce(func.sum(CallRecord.tokens_in), 0),
        func.coalesce(func.sum(CallRecord.tokens_out), 0),
        func.coalesce(func.sum(CallRecord.latency_ms), 0),
    )
    .where(CallRecord.role == CallRole.PROBE.value)
    .group_by(CallRecord.run_id)
)


class DayQueries(StoreBase):
    """Adding days, finding them, and counting them by status."""

    def next_day_index(self, run_id: str) -> int:
        """The index the run's next day takes: one past its last day that holds one."""
        last = self._scalar(_LAST_HELD, {"run_id": run_id})
        return 1 if last is None else int(last) + 1

    def count_days(
        self, run_id: str, status: DayStatus | None = None, *, index: int | None = None
    ) -> int:
        """The run's days (of ``status``; at ``index``: its failed tries, for one)."""
        stmt = _count_statement(status is not None, index is not None)
        params = {"run_id": run_id, "status": status, "index": index}
        return int(self._scalar(stmt, params) or 0)

    def get_day(self, run_id: str, index: int) -> Day:
        """Day ``index``: the one that holds the index, else its latest failed try."""
        day = self.session.scalar(
            select(Day)
            .where(Day.run_id == run_id, Day.index == index)
            .order_by((Day.status == DayStatus.FAILED).asc(), Day.id.desc())
            .limit(1)
        )
        if day is None:
            raise NotFound(f"run {run_id} has no day {index}")
        return day

    def list_days(self, run_id: str) -> Sequence[Day]:
        return self.session.scalars(
            select(Day).where(Day.run_id == run_id).order_by(Day.index, Day.id)
        ).all()

    def held_days(self, run_id: str, indexes: Collection[int]) -> dict[int, Day]:
        """The days that hold these indexes (not failed tries), by index."""
        if not indexes:
            return {}
        stmt = (
            select(Day)
            .where(
                Day.run_id == run_id,
                Day.index.in_(sorted(indexes)),
                Day.status != DayStatus.FAILED,
            )
            .options(defer(Day.prompt), defer(Day.raw_output))
        )
        return {day.index: day for day in self.session.scalars(stmt.order_by(Day.id))}

    def add_day(
        self,
        run_id: str,
        index: int,
        *,
        external_date: dt.date,
        status: str,
        model_id: str,
        model_version: str,
        prompt_hash: str,
        prompt: list[dict[str, str]],
        started_at: dt.datetime,
        finished_at: dt.datetime,
        raw_output: str | None = None,
        error: str | None = None,
        attempts: int = 1,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        latency_ms: int | None = None,
        worker: str | None = None,
        lease_generation: int | None = None,
    ) -> Day:
        """Add day ``index`` of the run, its id set. ``worker`` and ``lease_generation``
        say who wrote it (a service's worker id, or "cli").

        One prebuilt Core insert, as for entries: the day returned is not in the session,
        so a change made to it afterwards is not saved. Every day's commit writes one,
        and the ORM's unit of work cost several times the statement itself."""
        day = Day(
            run_id=run_id,
            index=index,
            external_date=external_date,
            status=status,
            model_id=model_id,
            model_version=model_version,
            prompt_hash=prompt_hash,
            prompt=prompt,
            raw_output=raw_output,
            error=error,
            attempts=attempts,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=latency_ms,
            started_at=started_at,
            finished_at=finished_at,
            worker=worker,
            lease_generation=lease_generation,
        )
        row = {name: getattr(day, name) for name in _DAY_COLUMNS}
        day.id = self._core().execute(_INSERT_DAY, row).scalar_one()
        return day

    def usage(self, run_id: str) -> Usage:
        """What the run's model calls cost in all: tokens in and out, and milliseconds
        spent waiting on the model, endpoint retries and their waits included. Every day
        counts, failed and reverted ones too: their calls were made. So do the probe
        predictions of check-ins, which no day's own figures hold (found through the
        ``(run_id, role)`` index of ``calls``)."""
        total = Usage(0, 0, 0)
        for table, where in (
            (Day, Day.run_id == run_id),
            (CallRecord, (CallRecord.run_id == run_id) & (CallRecord.role == CallRole.PROBE)),
        ):
            row = self.session.execute(
                select(
                    func.coalesce(func.sum(table.tokens_in), 0),
                    func.coalesce(func.sum(table.tokens_out), 0),
                    func.coalesce(func.sum(table.latency_ms), 0),
                ).where(where)
            ).one()
            total = Usage(*(a + int(b or 0) for a, b in zip(total, row, strict=True)))
        return total

    def token_totals(self, run_id: str) -> tuple[int, int]:
        usage = self.usage(run_id)
        return usage.tokens_in, usage.tokens_out

    def failed_streak(self, run_id: str, limit: int, *, after_id: int = 0) -> int:
        """How many of the run's latest tries after day row ``after_id`` (the run's
        ``resumed_after_day_id``: a resume starts the streak afresh), up to ``limit``,
        failed in a row. Tries are ordered by row: one run's days are written one at a
        time, under its lock."""
        statuses = self.session.scalars(
            select(Day.status)
            .where(Day.run_id == run_id, Day.status != DayStatus.REVERTED, Day.id > after_id)
            .order_by(Day.id.desc())
            .limit(limit)
        ).all()
        streak = 0
        for status in statuses:
            if status != DayStatus.FAILED:
                break
            streak += 1
        return streak

    def last_committed_day(self, run_id: str) -> int:
        return int(self._scalar(_LAST_COMMITTED, {"run_id": run_id}) or 0)

    def committed_day_indexes(
        self, run_id: str, *, after: int, before: int, limit: int
    ) -> list[int]:
        params = {"run_id": run_id, "after": after, "before": before, "limit": limit}
        return [row[0] for row in self._rows(_COMMITTED_INDEXES, params)]

    def committed_days_after(
        self, run_id: str, index: int, *, next_index: int | None = None
    ) -> int:
        """Committed days after day ``index``, at the cost of two index probes and the
        failed and reverted days after it, however many days the run has committed.

        Indices are dense over the days that hold one (committed and reverted; failed
        tries hold none) and no day is ever deleted, so the days after ``index`` are
        ``last - index``, and the committed ones are those less the reverted ones. A
        record written before migration 0009 also has gaps: failed days that took an
        index, which no other day holds. They are subtracted too. ``next_index``: the
        run's :meth:`next_day_index`, if the caller read it in this transaction.
        """
        last = (next_index or self.next_day_index(run_id)) - 1
        if last <= index:
            return 0
        others = self._scalar(_OTHERS, {"run_id": run_id, "after": index, "last": last})
        return last - index - int(others or 0)

    def revert_days(self, run_id: str, after: int, through: int) -> int:
        """Mark committed days in (after, through] reverted. Their entries stay."""
        days = self.session.scalars(
            select(Day).where(
                Day.run_id == run_id,
                Day.index > after,
                Day.index <= through,
                Day.status == DayStatus.COMMITTED,
            )
        ).all()
        for day in days:
            day.status = DayStatus.REVERTED
        self.session.flush()
        return len(days)


class TallyQueries(StoreBase):
    """Every run's days and usage counted at once, for listing many runs."""

    def tallies(self, run_ids: Collection[str] | None = None) -> dict[str, RunTally]:
        """:class:`RunTally` of these runs (all runs: None) in two grouped reads, where
        asking run by run took six statements each: what `run list` shows of every run.
        A run with no days is missing; its tally is ``RunTally()``."""
        days, probes = _TALLY_DAYS, _TALLY_PROBES
        if run_ids is not None:
            days = days.where(Day.run_id.in_(sorted(run_ids)))
            probes = probes.where(CallRecord.run_id.in_(sorted(run_ids)))
        spent = {
            run_id: Usage(*(int(x or 0) for x in rest))
            for run_id, *rest in self.session.execute(probes)
        }
        found = {}
        for (
            run_id,
            committed,
            failed,
            reverted,
            last,
            tokens_in,
            tokens_out,
            ms,
        ) in self.session.execute(days):
            extra = spent.get(run_id, Usage(0, 0, 0))
            usage = Usage(
                int(tokens_in) + extra.tokens_in,
                int(tokens_out) + extra.tokens_out,
                int(ms) + extra.latency_ms,
            )
            held = 1 if last is None else int(last) + 1
            found[run_id] = RunTally(int(committed), int(failed), int(reverted), held, usage)
        return found
