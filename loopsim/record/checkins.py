"""Check-ins and probes: the questions a human answers, and the check-ins that ask them.

A probe is a question the real researcher can answer; a check-in pairs some of them with
the simulation's predictions (:class:`~loopsim.record.tables.ProbePair`). What a check-in
decides, and when one is due, is :mod:`loopsim.checkin`'s business; these are its rows.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

from sqlalchemy import String, Table, bindparam, func, insert, select, update

from loopsim.errors import NotFound
from loopsim.record.base import StoreBase, one_of
from loopsim.record.tables import CheckIn, Day, Entry, Probe, ProbePair, utcnow
from loopsim.schemas import Author, EntryKind


@functools.cache
def _checkins_statement(of_run: bool, pending: bool) -> Any:
    """Check-ins in order, of one run or all, pending only or not: built once each, as
    every day's check-in test reads its run's."""
    stmt = select(CheckIn).order_by(CheckIn.id)
    if of_run:
        stmt = stmt.where(CheckIn.run_id == bindparam("run_id", type_=String))
    if pending:
        stmt = stmt.where(CheckIn.decision.is_(None))
    return stmt


class CheckinRow(NamedTuple):
    """What the check-in schedule reads of each of a run's check-ins, after every day: a
    plain row. A long supervised run has thousands, and loading each as an ORM object made
    that daily test grow with them. Only the columns it reads every day: decoding each
    row's timestamps cost more than the rest of the row."""

    id: int
    first_day_index: int
    last_day_index: int
    decision: str | None
    drift_score: float | None


_CHECKIN_ROWS = (
    select(
        CheckIn.id,
        CheckIn.first_day_index,
        CheckIn.last_day_index,
        CheckIn.decision,
        CheckIn.drift_score,
    )
    .where(CheckIn.run_id == bindparam("run_id", type_=String))
    .order_by(CheckIn.id)
)


@functools.cache
def _count_decided(decisions: tuple[str, ...]) -> Any:
    """Counts the run's check-ins decided one of ``decisions``: one statement a set."""
    return (
        select(func.count())
        .select_from(CheckIn)
        .where(
            CheckIn.run_id == bindparam("run_id", type_=String),
            one_of(CheckIn.decision, decisions),
        )
    )


# Every human answer of a run's check-ins, in check-in and pair order.
_ANSWERS = (
    select(ProbePair.probe_id, ProbePair.human_answer)
    .join(CheckIn, ProbePair.checkin_id == CheckIn.id)
    .where(CheckIn.run_id == bindparam("run_id", type_=String), ProbePair.human_answer.is_not(None))
    .order_by(CheckIn.id, ProbePair.id)
)


class ProbeQueries(StoreBase):
    """Probes: proposed by the researcher, accepted or rejected by a human."""

    def propose_probes(self, entries: Sequence[Entry]) -> int:
        """Offer each researcher question as a probe; a human must accept it first. A
        question the run already has as a probe (in any status), word for word, is not
        offered again: a memoryless researcher asks the same one day after day."""
        rows: dict[str, dict[str, Any]] = {}
        for entry in entries:
            if entry.kind == EntryKind.QUESTION and entry.author == Author.RESEARCHER:
                question = entry.body[:500]
                rows.setdefault(
                    question,
                    dict(
                        run_id=entry.run_id,
                        question=question,
                        source="researcher",
                        status="proposed",
                        proposed_in_entry_id=entry.id,
                        created_at=entry.created_at,
                    ),
                )
        if not rows:
            return 0
        run_id = next(iter(rows.values()))["run_id"]
        for question in self._core().scalars(
            select(Probe.question).where(Probe.run_id == run_id, one_of(Probe.question, [*rows]))
        ):
            rows.pop(question, None)
        if rows:  # one executemany on Core: nothing reads the new probes back here
            self._core().execute(insert(cast(Table, Probe.__table__)), list(rows.values()))
        return len(rows)

    def list_probes(self, run_id: str, status: str | None = None) -> Sequence[Probe]:
        stmt = select(Probe).where(Probe.run_id == run_id).order_by(Probe.id)
        if status is not None:
            stmt = stmt.where(Probe.status == status)
        return self.session.scalars(stmt).all()

    def probes_with_days(
        self,
        run_id: str | None = None,
        status: str | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> list[tuple[Probe, int | None, str | None]]:
        """The run's probes (or these ``ids``), each with the index and status of the day
        whose entry proposed it (None for a probe from the spec or a human): a question
        from a day a check-in since reverted stays ``proposed``, and only this says
        where it came from."""
        stmt = (
            select(Probe, Day.index, Day.status)
            .outerjoin(Entry, Probe.proposed_in_entry_id == Entry.id)
            .outerjoin(Day, Entry.day_id == Day.id)
            .order_by(Probe.id)
        )
        if run_id is not None:
            stmt = stmt.where(Probe.run_id == run_id)
        if ids is not None:
            stmt = stmt.where(Probe.id.in_(sorted(set(ids))))
        if status is not None:
            stmt = stmt.where(Probe.status == status)
        return [(probe, index, day) for probe, index, day in self.session.execute(stmt)]

    def add_probe(self, run_id: str, question: str, *, source: str, status: str) -> Probe:
        """Add one probe, flushed so its id is known."""
        probe = Probe(
            run_id=run_id, question=question, source=source, status=status, created_at=utcnow()
        )
        self.session.add(probe)
        self.session.flush()
        return probe

    def get_probe(self, probe_id: int) -> Probe:
        probe = self.session.get(Probe, probe_id)
        if probe is None:
            raise NotFound(f"no probe {probe_id}; `loopsim probe list RUN` shows them")
        return probe


class CheckinQueries(StoreBase):
    """Check-ins and their probe pairs: opening one, the human's answers, the decision."""

    def list_checkins(
        self, run_id: str | None = None, *, pending: bool = False
    ) -> Sequence[CheckIn]:
        stmt = _checkins_statement(run_id is not None, pending)
        return self.session.scalars(stmt, {"run_id": run_id}).all()

    def checkin_rows(self, run_id: str) -> list[CheckinRow]:
        """The run's check-ins in order, as the schedule reads them (:class:`CheckinRow`)."""
        return [CheckinRow(*row) for row in self._rows(_CHECKIN_ROWS, {"run_id": run_id})]

    def count_checkins(self, run_id: str, decisions: Sequence[str]) -> int:
        """How many of the run's check-ins were decided one of ``decisions``: a count,
        where a day needs no check-in row itself."""
        stmt = _count_decided(tuple(sorted(decisions)))
        return int(self._scalar(stmt, {"run_id": run_id}) or 0)

    def pending_checkins(self) -> int:
        return int(
            self.session.scalar(
                select(func.count()).select_from(CheckIn).where(CheckIn.decision.is_(None))
            )
            or 0
        )

    def get_checkin(self, checkin_id: int) -> CheckIn:
        found = self.session.get(CheckIn, checkin_id)
        if found is None:
            raise NotFound(f"no check-in {checkin_id}; `loopsim checkin list` shows them")
        return found

    def last_checkin(self, run_id: str) -> CheckIn | None:
        return self.session.scalar(
            select(CheckIn).where(CheckIn.run_id == run_id).order_by(CheckIn.id.desc()).limit(1)
        )

    def first_answers(self, run_id: str) -> dict[int, str]:
        """Probe id -> the first human answer to it in the run's check-ins: one read,
        however many check-ins the run has had."""
        first: dict[int, str] = {}
        for probe_id, answer in self._rows(_ANSWERS, {"run_id": run_id}):
            first.setdefault(probe_id, answer)
        return first

    def pairs(self, checkin_id: int) -> Sequence[tuple[ProbePair, Probe]]:
        rows = self.session.execute(
            select(ProbePair, Probe)
            .join(Probe, ProbePair.probe_id == Probe.id)
            .where(ProbePair.checkin_id == checkin_id)
            .order_by(ProbePair.id)
        )
        return [(pair, probe) for pair, probe in rows]

    def add_checkin(
        self,
        run_id: str,
        reason: str,
        *,
        first_day: int,
        last_day: int,
        detail: str | None,
        predictions: Sequence[tuple[int, str, bool]],
    ) -> CheckIn:
        """Open a check-in over days ``first_day..last_day`` with one pair per
        ``(probe id, prediction, is a retest)``, flushed so its id is known."""
        checkin = CheckIn(
            run_id=run_id,
            reason=reason,
            first_day_index=first_day,
            last_day_index=last_day,
            detail=detail,
            opened_at=utcnow(),
        )
        self.session.add(checkin)
        self.session.flush()
        for probe_id, prediction, is_retest in predictions:
            self.session.add(
                ProbePair(
                    checkin_id=checkin.id,
                    probe_id=probe_id,
                    prediction=prediction,
                    is_retest=is_retest,
                )
            )
        self.session.flush()
        return checkin

    def get_pair(self, pair_id: int) -> ProbePair | None:
        return self.session.get(ProbePair, pair_id)

    @staticmethod
    def answer_pair(pair: ProbePair, answer: str, at: dt.datetime) -> None:
        pair.human_answer, pair.answered_at = answer, at

    @staticmethod
    def reveal_pair(pair: ProbePair, similarity: float | None, at: dt.datetime) -> None:
        pair.revealed_at, pair.similarity = at, similarity

    @staticmethod
    def rate_pair(pair: ProbePair, rating: int | None) -> None:
        pair.rating = rating

    @staticmethod
    def score_pair(
        pair: ProbePair,
        *,
        similarity: float | None,
        agreement: float | None,
        null_level: float,
        ceiling: float,
    ) -> None:
        """The figures a decision read this pair with (see checkin/calibration.py)."""
        pair.similarity = similarity
        pair.agreement, pair.null_level, pair.ceiling = agreement, null_level, ceiling

    @staticmethod
    def judge_pair(
        pair: ProbePair, rating: int | None, reason: str | None, calls: list[dict[str, Any]]
    ) -> None:
        """The judge's verdict on a pair, and every call it took."""
        pair.judge_rating, pair.judge_reason, pair.judge_calls = rating, reason, calls

    def claim_decision(
        self,
        checkin_id: int,
        *,
        decision: str,
        note: str | None,
        decided_at: dt.datetime,
        drift_score: float | None,
        agreement: float | None = None,
        ceiling: float | None = None,
        trend: float | None = None,
        similarity: str | None = None,
    ) -> bool:
        """Record the decision, and the figures it was made on, if the check-in has none
        yet; False if it had one. Once only, even against a racing writer: the update
        matches an undecided row."""
        claimed = self.session.execute(
            update(CheckIn)
            .where(CheckIn.id == checkin_id, CheckIn.decision.is_(None))
            .values(
                decision=decision,
                note=note,
                decided_at=decided_at,
                drift_score=drift_score,
                agreement=agreement,
                ceiling=ceiling,
                trend=trend,
                similarity=similarity,
            )
        )
        return bool(claimed.rowcount == 1)  # type: ignore[attr-defined]
