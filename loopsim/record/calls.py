"""Calls: every model call a day made, exactly as sent and received, retries included.

A day's calls commit with the day; a check-in's probe predictions, made after its last
day committed, are added to that day later (role ``probe``). The loop hands over what the
researcher's conversation logged (anything shaped like :class:`LoggedCall`), and the rows
are built here, so no layer above the record builds one field by field.

A judge's calls (a decision rating a prediction) are kept on their probe pair
(``probe_pairs.judge_calls``), not here; :meth:`CallQueries.judge_calls` reads them back
beside a run's calls, with the check-in they were made for.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, Protocol, cast

from sqlalchemy import Integer, String, Table, bindparam, func, insert, select
from sqlalchemy.orm import defer

from loopsim.errors import NotFound
from loopsim.record.base import StoreBase, one_of
from loopsim.record.streams import BATCH
from loopsim.record.tables import CallRecord, CheckIn, Day, Entry, Probe, ProbePair
from loopsim.schemas import CallRole, DayStatus

# The digest calls of one level on the days after a range, with whether each was
# accepted: a failed day asks for none, so committed and reverted days, as index ranges.
_DIGEST_TRIES = (
    select(Day.index, CallRecord.accepted)
    .join(CallRecord, CallRecord.day_id == Day.id)
    .where(
        Day.run_id == bindparam("run_id", type_=String),
        one_of(Day.status, (DayStatus.COMMITTED.value, DayStatus.REVERTED.value)),
        Day.index > bindparam("after", type_=Integer),
        CallRecord.role == CallRole.DIGEST.value,
        CallRecord.depth == bindparam("level", type_=Integer),
    )
    .order_by(Day.index, CallRecord.ordinal)
)


class LoggedCall(Protocol):
    """One model call as the researcher's conversation logged it. ``item`` is the index,
    in the day's batch of entries, of the entry an accepted reply became."""

    @property
    def task(self) -> int: ...
    @property
    def role(self) -> str: ...
    @property
    def depth(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def messages(self) -> list[dict[str, str]]: ...
    @property
    def reply(self) -> str: ...
    @property
    def accepted(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def model_version(self) -> str: ...
    @property
    def tokens_in(self) -> int | None: ...
    @property
    def tokens_out(self) -> int | None: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def item(self) -> int | None: ...


def _calls_statement(
    run_id: str, day_index: int | None, roles: Collection[str], include_reverted: bool
) -> Any:
    stmt = select(CallRecord, Day).join(Day, CallRecord.day_id == Day.id)
    stmt = stmt.where(CallRecord.run_id == run_id, Day.run_id == run_id)
    if day_index is not None:
        stmt = stmt.where(Day.index == day_index)
    if roles:
        stmt = stmt.where(CallRecord.role.in_(sorted(roles)))
    if not include_reverted:
        stmt = stmt.where(Day.status != DayStatus.REVERTED)
    return stmt


class CallQueries(StoreBase):
    """Writing a day's calls, and reading them back in order."""

    def add_calls(self, day: Day, calls: Sequence[LoggedCall], entries: Sequence[Entry]) -> None:
        """Add the day's calls, numbered from 1 in the order they were made; a call whose
        reply became an entry names it by the seq of ``entries[call.item]``."""
        self._insert(
            self._row(
                day,
                ordinal,
                call,
                call.task,
                entries[call.item].seq if call.item is not None and entries else None,
            )
            for ordinal, call in enumerate(calls, 1)
        )

    def add_later_calls(self, run_id: str, day_index: int, calls: Sequence[LoggedCall]) -> None:
        """Add calls made after day ``day_index`` committed (a check-in's probe
        predictions) to that day, numbered on from its own calls and tasks. The caller
        holds the run locked, so no two writers number them alike."""
        day = self.session.scalar(
            select(Day).where(
                Day.run_id == run_id, Day.index == day_index, Day.status != DayStatus.FAILED
            )
        )
        if day is None:
            raise NotFound(f"run {run_id} has no day {day_index}")
        ordinal, task = self.session.execute(
            select(
                func.coalesce(func.max(CallRecord.ordinal), 0),
                func.coalesce(func.max(CallRecord.task), 0),
            ).where(CallRecord.day_id == day.id)
        ).one()
        self._insert(
            self._row(day, int(ordinal) + n, call, int(task) + call.task, None)
            for n, call in enumerate(calls, 1)
        )

    def _insert(self, rows: Iterable[dict[str, Any]]) -> None:
        """One executemany for all the rows: nothing reads a call's id back, so no
        RETURNING, where the ORM's flush sent one INSERT ... RETURNING a call. A Core
        insert of the table: the ORM's bulk insert would split the rows by which of
        their values are None."""
        rows = list(rows)
        if rows:
            self.session.execute(insert(cast(Table, CallRecord.__table__)), rows)

    @staticmethod
    def _row(
        day: Day, ordinal: int, call: LoggedCall, task: int, entry_seq: int | None
    ) -> dict[str, Any]:
        return dict(
            run_id=day.run_id,
            day_id=day.id,
            ordinal=ordinal,
            task=task,
            role=call.role,
            depth=call.depth,
            attempt=call.attempt,
            entry_seq=entry_seq,
            messages=call.messages,
            reply=call.reply,
            accepted=call.accepted,
            error=call.error,
            model_version=call.model_version,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            latency_ms=call.latency_ms,
        )

    def day_calls(self, day_id: int) -> Sequence[CallRecord]:
        """Every model call a day made, retries included, in the order they were made."""
        return self.session.scalars(
            select(CallRecord).where(CallRecord.day_id == day_id).order_by(CallRecord.ordinal)
        ).all()

    def run_calls(
        self,
        run_id: str,
        *,
        day_index: int | None = None,
        roles: Collection[str] = (),
        include_reverted: bool = True,
        last: int | None = None,
    ) -> list[tuple[CallRecord, Day]]:
        """A run's calls with their days, in day order and, within a day, in the order
        they were made. ``day_index`` keeps one day, ``roles`` (if any) those roles;
        ``last`` keeps only the latest that many (still oldest first)."""
        stmt = _calls_statement(run_id, day_index, roles, include_reverted)
        if last is not None:
            newest = stmt.order_by(Day.index.desc(), Day.id.desc(), CallRecord.ordinal.desc())
            newest = newest.limit(last)
            return [(call, day) for call, day in reversed(self.session.execute(newest).all())]
        return list(
            self.iter_run_calls(
                run_id, day_index=day_index, roles=roles, include_reverted=include_reverted
            )
        )

    def iter_run_calls(
        self,
        run_id: str,
        *,
        day_index: int | None = None,
        roles: Collection[str] = (),
        include_reverted: bool = True,
        day_range: tuple[int, int | None] | None = None,
    ) -> Iterator[tuple[CallRecord, Day]]:
        """:meth:`run_calls` without ``last``, read :data:`BATCH` rows at a time: a
        run's calls carry every prompt it sent, far more than its entries. ``day_range``
        keeps the days from its first index through its last (None: no end). The days
        come without their prompt and raw reply, which no caller of this reads."""
        # A day's failed tries share its index and come first, in the order made.
        stmt = (
            _calls_statement(run_id, day_index, roles, include_reverted)
            .order_by(Day.index, Day.id, CallRecord.ordinal)
            .options(defer(Day.prompt), defer(Day.raw_output))
            .execution_options(yield_per=BATCH)
        )
        if day_range is not None:
            first, last = day_range
            stmt = stmt.where(Day.index >= first)
            if last is not None:
                stmt = stmt.where(Day.index <= last)
        yield from ((call, day) for call, day in self.session.execute(stmt))

    def judge_calls(
        self, run_id: str, *, day_index: int | None = None, since_day: int | None = None
    ) -> list[tuple[CheckIn, ProbePair, Probe]]:
        """The probe pairs of a run's check-ins that a judge rated, with their check-in
        and probe, by the last day the check-in covers (``day_index``: that day only;
        ``since_day``: that day and later), in check-in and pair order."""
        stmt = (
            select(CheckIn, ProbePair, Probe)
            .join(ProbePair, ProbePair.checkin_id == CheckIn.id)
            .join(Probe, ProbePair.probe_id == Probe.id)
            .where(CheckIn.run_id == run_id, ProbePair.judge_calls.is_not(None))
        )
        if day_index is not None:
            stmt = stmt.where(CheckIn.last_day_index == day_index)
        if since_day is not None:
            stmt = stmt.where(CheckIn.last_day_index >= since_day)
        rows = self.session.execute(stmt.order_by(CheckIn.id, ProbePair.id))
        return [(checkin, pair, probe) for checkin, pair, probe in rows]

    def digest_tries(self, run_id: str, level: int, after_day: int) -> list[int]:
        """For a digest of ``level`` covering days up to ``after_day`` and still due: the
        days that asked for it and failed, oldest first. Digests of a level are written
        in order, so those are the days after ``after_day``, and after the last day that
        wrote one of that level (an earlier digest written late, or one a rollback
        reverted), that asked for a digest of that level."""
        params = {"run_id": run_id, "after": after_day, "level": level}
        tried: list[int] = []
        for index, accepted in self._rows(_DIGEST_TRIES, params):
            if accepted:
                tried.clear()
            elif not tried or tried[-1] != index:
                tried.append(int(index))
        return tried

    def blind_days(self, run_id: str) -> set[int]:
        """The days whose probe predictions must stay hidden: the last day of each
        check-in with a probe whose blind answer is not stored yet. A prediction is shown
        only once the human has answered, in the review and in every export alike."""
        stmt = (
            select(CheckIn.last_day_index)
            .join(ProbePair, ProbePair.checkin_id == CheckIn.id)
            .where(CheckIn.run_id == run_id, ProbePair.answered_at.is_(None))
            .distinct()
        )
        return {int(index) for index in self.session.scalars(stmt)}
