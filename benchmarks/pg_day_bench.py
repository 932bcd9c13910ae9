"""Per-day cost on PostgreSQL with no planner statistics: autovacuum off, no ``ANALYZE``.

Creates a throwaway PostgreSQL database, migrates it with ``loopsim db upgrade``'s code,
turns autovacuum off for every table (``ALTER TABLE ... SET (autovacuum_enabled =
false)``) and seeds one run per size with ``view_bench.seed_record`` (realistic word
frequencies, digests on the loop's schedule), so the planner sees tables it has never
analysed, as on a server whose autovacuum is off or has not caught up with an import.
Then, in rounds that step every size in turn, it times:

- a day end to end through ``Loop.step`` and the check-in test after it, the path
  ``loopsim run step`` takes, with an instant scripted model;
- the view alone (``build_view``, the queries that read the record for a day).

It prints each size's medians against the smallest size's, measured in the same run.

    python benchmarks/pg_day_bench.py [--sizes 100,10000] [--days 10] [--rounds 3]
        [--admin postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--keep NAME]

``--keep NAME`` keeps the seeded database under that name and reuses it on the next
call (seeding 10^4 entries takes a minute or two); without it the database is dropped.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))

from view_bench import DATE, SPEC, seed_record

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.researcher.view import build_view
from loopsim.testing import scripted_factory

ADMIN = os.environ.get("LOOPSIM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def create(admin: sa.Engine, name: str, sizes: list[int]) -> tuple[str, dict[int, str]]:
    """The database's URL and a run id per size; seeds them unless ``name`` exists."""
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}
        ).first()
        if not exists:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    if not exists:
        dbmod.upgrade(url)
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            tables = conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).all()
            for (table,) in tables:
                conn.exec_driver_sql(f'ALTER TABLE "{table}" SET (autovacuum_enabled = false)')
        engine.dispose()
    database = dbmod.Database.open(url)
    runs: dict[int, str] = {}
    try:
        with database.read() as session:
            for run in Store(session).list_runs():
                runs[int(run.name.removeprefix("bench-"))] = run.id
        for size in sizes:
            if size in runs:
                continue
            with database.write() as session:
                run = Store(session).create_run(SPEC, name=f"bench-{size}", model="bench:x")
                checkins = {**run.spec["checkins"], "every_days": 100_000}
                checkins["spot_check_probability"] = 0.0
                budget = {**run.spec["budget"], "days": 1_000_000}
                run.spec = {**run.spec, "checkins": checkins, "budget": budget}
                runs[size] = run.id
            began = time.perf_counter()
            seed_record(database, runs[size], size)
            print(
                f"seeded {size:,} entries in {time.perf_counter() - began:.0f} s", file=sys.stderr
            )
    finally:
        database.dispose()
    return url, runs


def analysed(url: str) -> list[str]:
    """Tables the planner has column statistics for: a check that nothing analysed them
    once they held rows (``db upgrade`` analyses the tables while they are empty)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = current_schema() "
                "ORDER BY tablename"
            ).all()
    finally:
        engine.dispose()
    return [row[0] for row in rows]


def measure(url: str, run_id: str, days: int) -> tuple[list[float], list[float]]:
    """Milliseconds of ``days`` stepped days, and of as many view builds."""
    database = dbmod.Database.open(url)
    try:
        factory, _ = scripted_factory()
        loop = Loop(database, Settings(), factory)
        loop.start(run_id)
        loop.step(run_id)  # warm the connection pool and caches
        day_ms, view_ms = [], []
        for _ in range(days):
            began = time.perf_counter()
            loop.step(run_id)
            loop.open_due_checkin(run_id)
            day_ms.append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            with database.read() as session:
                build_view(Store(session), run_id, SPEC.charter, DATE, Settings().view_token_budget)
            view_ms.append((time.perf_counter() - began) * 1000)
    finally:
        database.dispose()
    return day_ms, view_ms


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--days", type=int, default=10, help="timed days per size per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, sizes interleaved")
    parser.add_argument("--admin", default=ADMIN, help="a URL that may create databases")
    parser.add_argument("--keep", help="keep the seeded database under this name, and reuse it")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    admin = sa.create_engine(args.admin, isolation_level="AUTOCOMMIT")
    name = args.keep or f"loopsim_bench_{secrets.token_hex(4)}"
    try:
        url, runs = create(admin, name, sizes)
        days: dict[int, list[float]] = {size: [] for size in sizes}
        views: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(args.rounds):
            for size in sizes:
                day_ms, view_ms = measure(url, runs[size], args.days)
                days[size] += day_ms
                views[size] += view_ms
        known = analysed(url)
        print(f"tables with column statistics: {', '.join(known) or 'none'}", file=sys.stderr)
        print("| entries in run | ms/day p50 | ms/day p95 | p50 against smallest | view ms p50 |")
        print("|---:|---:|---:|---:|---:|")
        base = statistics.median(days[sizes[0]])
        for size in sizes:
            row: list[Any] = [
                f"{size:,}",
                f"{statistics.median(days[size]):.1f}",
                f"{p95(days[size]):.1f}",
                f"{statistics.median(days[size]) / base:.2f}x",
                f"{statistics.median(views[size]):.1f}",
            ]
            print("| " + " | ".join(row) + " |")
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


if __name__ == "__main__":
    main()
