"""The base every query class of the :class:`~loopsim.record.store.Store` extends.

It holds one session and its dialect, and the joins several nouns share. A query class
flushes when it needs ids, never commits: the caller owns the transaction through
:meth:`loopsim.record.db.Database.write`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, literal, or_, select
from sqlalchemy.orm import Session

from loopsim.record.tables import Day, Entry
from loopsim.schemas import DayStatus


def one_of(column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    """``column IN (values)`` for a fixed list of values: one bound parameter each, in a
    statement built once. ``in_`` of a plain list makes an "expanding" parameter, which
    SQLAlchemy rewrites into the SQL on every execution (a fifth of a short query's
    cost), while the database still needs the IN to read an index as a few ranges."""
    return cast(ColumnElement[bool], column.in_([literal(value) for value in values]))


class StoreBase:
    """Queries over one session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name

    def flush(self) -> None:
        """Send pending changes (ids, attribute writes) to the database; no commit."""
        self.session.flush()

    def _core(self) -> Connection:
        """The transaction's connection, for a statement built once at import (its
        parameters bound by name) that returns plain rows, not ORM objects. The ORM's
        path costs about twice Core's per statement, and building a statement again
        costs as much as running it; a day runs a few dozen. Pending ORM changes are
        flushed first, as the ORM would before a query of its own."""
        self.session.flush()
        return self.session.connection()

    def _scalar(self, stmt: Any, params: Mapping[str, Any]) -> Any:
        return self._core().scalar(stmt, params)

    def _rows(self, stmt: Any, params: Mapping[str, Any]) -> Sequence[Any]:
        return self._core().execute(stmt, params).all()

    def _entries_with_day(self, run_id: str) -> Any:
        return (
            select(Entry, Day.index, Day.status)
            .outerjoin(Day, Entry.day_id == Day.id)
            .where(Entry.run_id == run_id)
        )

    @staticmethod
    def _visible() -> Any:
        return or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED)
