"""Check-ins and probes: the questions a human answers, and the check-ins that ask them.

A probe is a question the real researcher can answer; a check-in pairs some of them with
the simulation's predictions (:class:`~loopsim.record.tables.ProbePair`). What a check-in
decides, and when one is due, is :mod:`loopsim.checkin`'s business; these are its rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from loopsim.errors import NotFound
from loopsim.record.base import StoreBase
from loopsim.record.tables import CheckIn, Entry, Probe, ProbePair
from loopsim.schemas import Author, EntryKind


class ProbeQueries(StoreBase):
    """Probes: proposed by the researcher, accepted or rejected by a human."""

    def propose_probes(self, entries: Sequence[Entry]) -> int:
        """Offer each researcher question as a probe; a human must accept it first."""
        count = 0
        for entry in entries:
            if entry.kind == EntryKind.QUESTION and entry.author == Author.RESEARCHER:
                self.session.add(
                    Probe(
                        run_id=entry.run_id,
                        question=entry.body[:500],
                        source="researcher",
                        status="proposed",
                        proposed_in_entry_id=entry.id,
                        created_at=entry.created_at,
                    )
                )
                count += 1
        self.session.flush()
        return count

    def list_probes(self, run_id: str, status: str | None = None) -> Sequence[Probe]:
        stmt = select(Probe).where(Probe.run_id == run_id).order_by(Probe.id)
        if status is not None:
            stmt = stmt.where(Probe.status == status)
        return self.session.scalars(stmt).all()

    def get_probe(self, probe_id: int) -> Probe:
        probe = self.session.get(Probe, probe_id)
        if probe is None:
            raise NotFound(f"no probe {probe_id}; `loopsim probe list RUN` shows them")
        return probe


class CheckinQueries(StoreBase):
    """Check-ins and their probe pairs."""

    def list_checkins(
        self, run_id: str | None = None, *, pending: bool = False
    ) -> Sequence[CheckIn]:
        stmt = select(CheckIn).order_by(CheckIn.id)
        if run_id is not None:
            stmt = stmt.where(CheckIn.run_id == run_id)
        if pending:
            stmt = stmt.where(CheckIn.decision.is_(None))
        return self.session.scalars(stmt).all()

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

    def pairs(self, checkin_id: int) -> Sequence[tuple[ProbePair, Probe]]:
        rows = self.session.execute(
            select(ProbePair, Probe)
            .join(Probe, ProbePair.probe_id == Probe.id)
            .where(ProbePair.checkin_id == checkin_id)
            .order_by(ProbePair.id)
        )
        return [(pair, probe) for pair, probe in rows]
