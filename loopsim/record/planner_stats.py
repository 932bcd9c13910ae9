"""PostgreSQL's planner statistics for the record's tables: kept, not left to chance.

PostgreSQL plans a query from statistics that ``ANALYZE`` gathers, and autovacuum runs it
in the background. Where autovacuum is off, slow, or has not yet looked at tables that a
restore or an import filled, the planner falls back on fixed guesses (a run's entries
taken for one row), and a plan built on them can cost seconds a query. loopsim's own
queries are shaped so that no plan is ruinous (see :mod:`loopsim.record.search`); this
module makes sure the planner also has statistics to choose well with:

- :func:`analyze` runs ``ANALYZE`` on the record's tables. :func:`loopsim.record.db.upgrade`
  calls it after every ``loopsim db upgrade`` on PostgreSQL.
- :class:`StatisticsKeeper` is what ``loopsim serve`` calls after each committed day: on
  the first and then every ``every`` days it analyses the tables whose statistics are
  missing or stale by autovacuum's own default rule (50 rows plus 10% of the table
  changed since the last analysis). Where autovacuum works, that finds nothing to do.
  Workers sharing one database take turns through an advisory lock, so two never
  analyse at once.

SQLite is left alone: it plans from its indexes and its own rules, and loopsim's
queries there are written for them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import Connection, exc

if TYPE_CHECKING:
    from loopsim.record.db import Database

log = logging.getLogger("loopsim.record.planner_stats")

# Every table of the record; alembic_version and integrity_checks hold a row or a few.
RECORD_TABLES = ("runs", "days", "entries", "calls", "checkins", "probes", "probe_pairs")
# Committed days between two looks at pg_stat_user_tables, per worker.
EVERY_DAYS = 50
# autovacuum_analyze_threshold and autovacuum_analyze_scale_factor, at their defaults.
STALE_ROWS = 50
STALE_SHARE = 0.1
# pg_try_advisory_xact_lock's key: "loopsim" in ASCII, as a number.
LOCK_KEY = 0x6C6F6F7073696D


def stale_tables(conn: Connection) -> list[str]:
    """The record's tables that hold rows the planner has no statistics for, or whose
    statistics autovacuum's default rule would renew; PostgreSQL only."""
    rows = conn.exec_driver_sql(
        "SELECT relname FROM pg_stat_user_tables "
        "WHERE schemaname = current_schema() AND relname = ANY(%(tables)s) AND ("
        "(last_analyze IS NULL AND last_autoanalyze IS NULL AND pg_relation_size(relid) > 0)"
        " OR n_mod_since_analyze > %(rows)s + %(share)s * n_live_tup) ORDER BY relname",
        {"tables": list(RECORD_TABLES), "rows": STALE_ROWS, "share": STALE_SHARE},
    )
    return [row[0] for row in rows]


def analyze(conn: Connection, tables: tuple[str, ...] | list[str] = RECORD_TABLES) -> list[str]:
    """``ANALYZE`` the given tables (default: every table of the record) on PostgreSQL;
    returns the tables analysed, none on SQLite. Inside the caller's transaction."""
    if conn.dialect.name != "postgresql" or not tables:
        return []
    names = [name for name in tables if name in RECORD_TABLES]
    conn.exec_driver_sql("ANALYZE " + ", ".join(f'"{name}"' for name in names))
    return names


class StatisticsKeeper:
    """Renews stale statistics as a service commits days (see the module's docstring)."""

    def __init__(self, database: Database, every: int = EVERY_DAYS) -> None:
        self.database = database
        self.every = max(1, every)
        self.days = 0

    def day_committed(self) -> list[str]:
        """Count a committed day; on the first and every ``every``-th, analyse the stale
        tables. Returns the tables analysed. A database error is logged, never raised:
        statistics are an optimisation, and the day is already committed."""
        self.days += 1
        if self.database.dialect != "postgresql" or (self.days - 1) % self.every:
            return []
        try:
            return self.refresh()
        except exc.SQLAlchemyError as error:
            log.warning(
                "could not renew planner statistics: %s",
                str(getattr(error, "orig", error)).strip().splitlines()[0],
                extra={"event": "stats.failed"},
            )
            return []

    def refresh(self) -> list[str]:
        """Analyse the stale tables now, unless another worker is at it."""
        with self.database.engine.begin() as conn:
            if not conn.exec_driver_sql(
                "SELECT pg_try_advisory_xact_lock(%(key)s)", {"key": LOCK_KEY}
            ).scalar():
                return []
            done = analyze(conn, stale_tables(conn))
        if done:
            log.info(
                "renewed planner statistics for %s",
                ", ".join(done),
                extra={"event": "stats.analyzed"},
            )
        return done
