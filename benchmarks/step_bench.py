"""`run step` overhead as the record grows: milliseconds per day with an instant model.

Seeds records of 10^2 .. 10^5 entries with ``view_bench.seed_record`` (realistic word
frequencies, digests on the loop's schedule), then times days of ``Loop.step`` plus the
check-in test that follows each day, on SQLite, and prints each size's median against the
10^2 figure measured in the same run. Sizes are interleaved over several rounds (each
round steps every size), and the per-round range of each ratio is printed beside it.

    python benchmarks/step_bench.py [--sizes 100,1000,10000,100000] [--days 20]
        [--rounds 3] [--cache DIR]

With ``--cache`` (the same folder given to ``view_bench.py``), seeded records are reused.

Each size runs twice: once as a supervised run would stand (an approved check-in through
the last seeded day, so the check-in schedule counts days since then), and once with no
check-in in its history at all (every schedule count then spans the whole record).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from view_bench import seeded

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.store import Store
from loopsim.record.tables import CheckIn, utcnow
from loopsim.testing import scripted_factory


def day_times(entries: int, days: int, cache: Path | None, supervised: bool) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        database, run_id, last = seeded(entries, Path(tmp), cache)
        with database.write() as session:  # no check-in may stop the timed days
            run = Store(session).get_run(run_id)
            checkins = {**run.spec["checkins"], "every_days": 100_000}
            checkins["spot_check_probability"] = 0.0
            budget = {**run.spec["budget"], "days": last + 1000}
            run.spec = {**run.spec, "checkins": checkins, "budget": budget}
            if supervised:  # as a run that had check-ins: the last one approved its days
                now = utcnow()
                session.add(
                    CheckIn(
                        run_id=run_id,
                        reason="scheduled",
                        first_day_index=max(1, last - 4),
                        last_day_index=last,
                        decision="approve",
                        drift_score=0.0,
                        opened_at=now,
                        decided_at=now,
                    )
                )
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
    return times


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[int(0.95 * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--days", type=int, default=20, help="timed days per size per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, sizes interleaved")
    parser.add_argument("--cache", type=Path, help="seeded records kept by view_bench.py")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        "| entries in record | check-in history | ms/day p50 | ms/day p95 "
        "| p50 against 10^2 | per-round range |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for supervised in (True, False):
        # Every round steps every size, so drift in the machine's speed over the minutes
        # of a run falls on all sizes alike; ratios are also taken within each round.
        pooled: dict[int, list[float]] = {size: [] for size in sizes}
        ratios: dict[int, list[float]] = {size: [] for size in sizes}
        for _ in range(args.rounds):
            medians = {}
            for size in sizes:
                times = day_times(size, args.days, args.cache, supervised)
                pooled[size] += times
                medians[size] = statistics.median(times)
            for size in sizes:
                ratios[size].append(medians[size] / medians[sizes[0]])
        base = statistics.median(pooled[sizes[0]])
        history = "last day approved" if supervised else "none"
        for size in sizes:
            p50 = statistics.median(pooled[size])
            spread = f"{min(ratios[size]):.2f}-{max(ratios[size]):.2f}x"
            print(
                f"| {size:,} | {history} | {p50:.1f} | {p95(pooled[size]):.1f} "
                f"| {p50 / base:.2f}x | {spread} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
