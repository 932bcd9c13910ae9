"""`run step` overhead as the record grows: milliseconds per day with an instant model.

Seeds records of 10^2 .. 10^5 entries with ``view_bench.seed_record`` (realistic word
frequencies, digests on the loop's schedule), then times 20 days of ``Loop.step`` plus the
check-in test that follows each day, on SQLite, and prints each size's median against the
10^2 figure measured in the same run.

    python benchmarks/step_bench.py [--sizes 100,1000,10000,100000] [--days 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from view_bench import SPEC, seed_record  # noqa: E402

from loopsim import db as dbmod  # noqa: E402
from loopsim.config import Settings  # noqa: E402
from loopsim.loop import Loop  # noqa: E402
from loopsim.store import Store  # noqa: E402
from loopsim.testing import scripted_factory  # noqa: E402


def per_day_ms(entries: int, days: int) -> tuple[float, float]:
    spec = SPEC.model_copy(
        update={"checkins": SPEC.checkins.model_copy(update={"every_days": 100_000})}
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "step.db")
        dbmod.upgrade(path)
        database = dbmod.Database.open(path)
        with database.write() as session:
            run_id = Store(session).create_run(spec, name="step", model="scripted:instant").id
        seed_record(database, run_id, entries)
        factory, _ = scripted_factory()
        loop = Loop(database, Settings(), factory)
        loop.start(run_id)
        loop.step(run_id)  # warm caches
        times = []
        for _ in range(days):
            began = time.perf_counter()
            loop.step(run_id)
            loop.open_due_checkin(run_id)
            times.append((time.perf_counter() - began) * 1000)
        database.dispose()
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--days", type=int, default=20)
    args = parser.parse_args()
    print("| entries in record | ms/day p50 | ms/day p95 | p50 against 10^2 |")
    print("|---:|---:|---:|---:|")
    base = None
    for size in (int(s) for s in args.sizes.split(",")):
        p50, p95 = per_day_ms(size, args.days)
        base = base or p50
        print(f"| {size:,} | {p50:.1f} | {p95:.1f} | {p50 / base:.2f}x |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
