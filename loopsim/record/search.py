"""Full-text search over a run's entries: FTS5 on SQLite, ``tsvector`` on PostgreSQL.

On PostgreSQL each entry keeps its ``tsvector`` in a stored column with a GIN index, so
no query parses an entry's text: a search costs little per row whatever plan the planner
picks, with statistics or without (see :mod:`loopsim.record.planner_stats`).

:func:`search_terms` is the one rule for which words of a query are searched, so the
researcher's ``search`` tool and ``loopsim record search`` match the same words.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    String,
    bindparam,
    column,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.sql.elements import ColumnElement

from loopsim.record.chain import ChainQueries
from loopsim.record.tables import Day, Entry

# PostgreSQL only: each entry's tsvector, generated from its title and body when it is
# inserted (migration 0010). The ORM does not map it; SQLite has its FTS5 table instead.
SEARCH_VECTOR: ColumnElement[Any] = literal_column("entries.search_vector")

# A word is a run of letters and digits. Words of 3 or more characters are searched
# (MLP, SAE, GPU); a 2-character word only when written in capitals (KL, RL, AI),
# because nearly every lowercase one (of, in, is, to) is a function word. Both indexes
# keep 2- and 3-letter tokens, so no new index is needed.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP_WORDS = """
am an as at be by do he if in is it me my no of on or so to up us we
all and any are but can did for get got had has her him his how its let may
nor not now off one our out own per she the too two use was way who why yet you
that this with from have what which when where there their about would could
should into than then them they these those your been were will does
"""  # 2-letter ones for queries written in capitals
_STOP = frozenset(_STOP_WORDS.split())


def _searchable(word: str) -> bool:
    if len(word) < 2 or (len(word) == 2 and not word.isupper()):
        return False
    return word.lower() not in _STOP


def search_terms(query: str, limit: int = 24) -> list[str]:
    """Words worth matching: long enough (or capitals), not stop words, deduplicated, in
    order, in lower case."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query):
        if _searchable(word):
            seen.setdefault(word.lower(), None)
    return list(seen)[:limit]


def dropped_words(query: str) -> list[str]:
    """The query's words that :func:`search_terms` leaves out, as written, once each."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query):
        if not _searchable(word):
            seen.setdefault(word, None)
    return list(seen)


# The ids at both ends of a seq range: two probes of the (run, seq) index, in a
# statement built once with its IN's two values bound by name (not an expanding list,
# which SQLAlchemy would splice into the SQL on every day's search).
_ID_ENDS = select(Entry.seq, Entry.id).where(
    Entry.run_id == bindparam("run_id", type_=String),
    Entry.seq.in_([bindparam("first", type_=Integer), bindparam("last", type_=Integer)]),
)


class SearchQueries(ChainQueries):
    """Matches for a query's words, best first."""

    def _id_range(
        self, run_id: str, seq_range: tuple[int, int] | None
    ) -> tuple[int | None, int | None]:
        """The ids of a run's entries at both ends of ``seq_range`` (default: all of them).
        Ids grow with seq within a run."""
        if seq_range is None:
            first_seq, last_seq = 1, self.chain_head(run_id)[0]
        else:
            first_seq, last_seq = seq_range
        params = {"run_id": run_id, "first": first_seq, "last": last_seq}
        ends = {seq: entry_id for seq, entry_id in self._rows(_ID_ENDS, params)}
        return ends.get(first_seq), ends.get(last_seq)

    def search(
        self,
        run_id: str,
        query: str,
        *,
        until: dt.date | None = None,
        before_day: int | None = None,
        include_reverted: bool = False,
        limit: int = 20,
        seq_range: tuple[int, int] | None = None,
    ) -> list[tuple[Entry, int | None, str | None]]:
        """Full-text matches for any of the query's words, best first; with
        ``seq_range`` (first and last seq, inclusive), only among those entries, so the
        cost need not grow with the record."""
        terms = search_terms(query)
        if not terms:
            return []
        if self.dialect == "sqlite":
            # The run's entries have ids from its first entry's to its last's. Bounding
            # rowids there is cheap for FTS5; matching the run_id column instead would
            # walk a posting list as long as the run (6 ms of 7 at 10^5 entries).
            lo, hi = self._id_range(run_id, seq_range)
            if lo is None or hi is None:
                return []
            words = " OR ".join(f'"{t}"' for t in terms)
            ranked = (
                text(
                    "SELECT rowid AS id, rank AS score FROM entries_fts "
                    "WHERE entries_fts MATCH :q AND rowid BETWEEN :lo AND :hi"
                )
                .columns(column("id", Integer), column("score", Float))
                .bindparams(q=words, lo=lo, hi=hi)
                .subquery("fts")
            )
            stmt = (
                self._entries_with_day(run_id)
                .join(ranked, ranked.c.id == Entry.id)
                .order_by(ranked.c.score.asc(), Entry.seq.desc())
            )
        else:
            # Matched and ranked from each entry's stored vector (migration 0010), never
            # from its text: whichever plan the planner picks, with statistics or
            # without, a row it looks at costs a lookup, not a parse. Without statistics
            # it takes the run's range through uq_entries_run_id_seq; with them, it ANDs
            # that with the GIN index.
            tsq = func.to_tsquery("english", " | ".join(terms))
            score = func.ts_rank(SEARCH_VECTOR, tsq)
            stmt = (
                self._entries_with_day(run_id)
                .where(SEARCH_VECTOR.op("@@")(tsq))
                .order_by(score.desc(), Entry.seq.desc())
            )
            if seq_range is not None:
                stmt = stmt.where(Entry.seq.between(*seq_range))
        stmt = stmt.limit(limit)
        if until is not None:
            stmt = stmt.where(Entry.external_date <= until)
        if before_day is not None:
            stmt = stmt.where(or_(Entry.day_id.is_(None), Day.index < before_day))
        if not include_reverted:
            stmt = stmt.where(self._visible())
        return [(e, idx, status) for e, idx, status in self.session.execute(stmt)]
