"""View build time and prompt size as the record grows.

Seeds SQLite records of 10^2 .. 10^5 entries (5 entries a day), then builds the view for
the next day 20 times each and prints a Markdown table. The naive baseline is the whole
record rendered into the prompt. Run:

    python benchmarks/view_bench.py [--sizes 100,1000,10000,100000] [--budget 3000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path

from loopsim import db as dbmod
from loopsim.schemas import parse_spec
from loopsim.store import EntryInput, Store
from loopsim.testing import add_day
from loopsim.view import ViewEntry, build_view, estimate_tokens

DATE = dt.date(2025, 6, 2)
WORDS = [
    "forager",
    "dance",
    "nectar",
    "comb",
    "colony",
    "patch",
    "distance",
    "quality",
    "waggle",
    "pollen",
    "hive",
    "scout",
    "recruit",
    "signal",
    "follow",
    "measure",
    "count",
    "film",
    "mark",
    "sugar",
]
SPEC = parse_spec(
    {
        "persona": {"name": "Bench", "background": "A benchmark persona."},
        "charter": {
            "agenda": "How do colonies weigh nectar quality against distance?",
            "open_questions": ["How is distance encoded in the waggle dance?"],
        },
        "time": {"policy": "fixed", "anchor": DATE.isoformat()},
    }
)


def body(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(40))


def seed(database: dbmod.Database, run_id: str, entries: int, per_day: int = 5) -> None:
    days = entries // per_day
    index = 0
    while index < days:
        with database.write() as session:
            store = Store(session)
            for _ in range(min(500, days - index)):
                index += 1
                items = [
                    EntryInput("note", f"Day {index} item {k}", body(index * per_day + k))
                    for k in range(per_day)
                ]
                add_day(store, run_id, index, items, date=DATE)


def measure(size: int, budget: int, repeats: int = 20) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.db")
        dbmod.upgrade(path)
        database = dbmod.Database.open(path)
        with database.write() as session:
            run_id = Store(session).create_run(SPEC, name="bench", model="bench:x").id
        started = time.perf_counter()
        seed(database, run_id, size)
        seeding = time.perf_counter() - started
        times, tokens = [], 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            with database.read() as session:
                view = build_view(Store(session), run_id, SPEC.charter, DATE, budget)
            times.append((time.perf_counter() - t0) * 1000)
            tokens = estimate_tokens(view.render())
        with database.read() as session:
            naive = sum(
                estimate_tokens(ViewEntry.of(e, i).render())
                for e, i, _ in Store(session).list_entries(run_id)
            )
        database.dispose()
    times.sort()
    return {
        "size": size,
        "seed_s": seeding,
        "p50": statistics.median(times),
        "p95": times[int(0.95 * (len(times) - 1))],
        "tokens": tokens,
        "naive": naive,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--budget", type=int, default=3000)
    args = parser.parse_args()
    rows = [measure(int(s), args.budget) for s in args.sizes.split(",")]
    print(
        f"| entries | view p50 ms | view p95 ms | view tokens (budget {args.budget}) "
        "| whole-record tokens | seeding s |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']:,} | {r['p50']:.1f} | {r['p95']:.1f} | {r['tokens']:,} "
            f"| {r['naive']:,} | {r['seed_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
