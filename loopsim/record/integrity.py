"""When the record was last checked: one row per ``loopsim db check`` on a sound database,
which ``loopsim db status`` reports (:mod:`loopsim.record.maintenance` runs the check)."""

from __future__ import annotations

from sqlalchemy import select

from loopsim.record.base import StoreBase
from loopsim.record.tables import IntegrityCheck, utcnow


class IntegrityQueries(StoreBase):
    """Recording an integrity check, and finding the last one."""

    def record_integrity_check(
        self, *, quick: bool, problems: int, runs: int, entries: int, version: str
    ) -> IntegrityCheck:
        check = IntegrityCheck(
            checked_at=utcnow(),
            quick=quick,
            ok=problems == 0,
            problems=problems,
            runs=runs,
            entries=entries,
            loopsim_version=version,
        )
        self.session.add(check)
        self.session.flush()
        return check

    def last_integrity_check(self) -> IntegrityCheck | None:
        return self.session.scalars(
            select(IntegrityCheck).order_by(IntegrityCheck.id.desc()).limit(1)
        ).first()
