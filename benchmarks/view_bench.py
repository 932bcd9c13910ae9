"""View build time, prompt size and prompt-prefix stability as the record grows.

Seeds SQLite records of 10^2 .. 10^5 entries (5 entries a day, text drawn from a Zipf
distribution over 4,000 made-up words, and hierarchical digests written on the same
schedule the loop uses, every 5 days), then, for each size and in the same run:

- builds the next day's view 30 times: p50 and p95 milliseconds, and its tokens;
- the naive baseline: the whole record rendered into the prompt (tokens);
- a Reflexion-style baseline: only the last 3 days' entries (build ms and tokens);
- steps 30 more days (each adds 5 entries and any digest due) and measures, for each
  day, the share of its prompt that is a byte-identical prefix of the day before's.

Each size is seeded once and measured at every budget (default: 3,000 tokens, the
default view budget, and 16,000).

    python benchmarks/view_bench.py [--sizes 100,1000,10000,100000] [--budgets 3000,16000]
        [--cache DIR]

``seed_record`` is the helper that builds a record of any size for other benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from loopsim.record import db as dbmod
from loopsim.record.store import EntryInput, Store
from loopsim.researcher.day import plan_digests
from loopsim.researcher.prompts import build_prompt
from loopsim.researcher.view import ViewEntry, build_view, estimate_tokens
from loopsim.schemas import EntryKind, parse_spec
from loopsim.testing import add_day

DATE = dt.date(2025, 6, 2)
EVERY = 5
PER_DAY = 5
SPEC = parse_spec(
    {
        "persona": {"name": "Bench", "background": "A benchmark persona."},
        "charter": {
            "agenda": "How do colonies weigh nectar quality against distance?",
            "open_questions": ["How is distance encoded in the waggle dance?"],
        },
        "time": {"policy": "fixed", "anchor": DATE.isoformat()},
        "digests": {"every_days": EVERY},
    }
)
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "pe", "da", "go", "zu", "fi"]
VOCAB = [
    "".join(random.Random(n).choice(_SYLLABLES) for _ in range(2 + n % 3)) + "x"[: n % 2]
    for n in range(4000)
] + ["distance", "waggle", "dance", "nectar", "quality", "forager", "colony", "encoded"]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCAB))]


def body(i: int, words: int = 40) -> str:
    rng = random.Random(i)
    return " ".join(rng.choices(VOCAB, WEIGHTS, k=words))


def add_seed_day(store: Store, run_id: str, index: int, date: dt.date = DATE) -> None:
    """Day ``index``: its entries, and the digests the loop would have written that day."""
    items = [
        EntryInput(
            EntryKind.QUESTION if k == 0 and index % 7 == 0 else EntryKind.NOTE,
            f"Day {index} item {k}",
            body(index * PER_DAY + k),
        )
        for k in range(PER_DAY)
    ]
    for job in plan_digests(store, run_id, index, date, EVERY):
        items.append(
            EntryInput(
                EntryKind.DIGEST,
                f"Digest of days {job.first_day}-{job.last_day}",
                body(-index * 10 - job.level, words=60),
                level=job.level,
                first_day=job.first_day,
                last_day=job.last_day,
            )
        )
    add_day(store, run_id, index, items, date=date)


def seed_record(database: dbmod.Database, run_id: str, entries: int) -> int:
    """Seed about ``entries`` research entries; returns the last day index."""
    days = max(1, entries // PER_DAY)
    index = 0
    while index < days:
        with database.write() as session:
            store = Store(session)
            for _ in range(min(200, days - index)):
                index += 1
                add_seed_day(store, run_id, index)
    return index


def seeded(size: int, folder: Path, cache: Path | None = None) -> tuple[dbmod.Database, str, int]:
    """A database in ``folder`` holding one run seeded with about ``size`` entries; its run
    id and last day. With ``cache``, the seeded file is kept there (``seed-SIZE.db``) and
    copied for later calls, by this script or another, so each size is seeded once."""
    path = folder / "bench.db"
    cached = cache / f"seed-{size}.db" if cache else None
    if cached is not None and cached.exists():
        shutil.copyfile(cached, path)
        dbmod.upgrade(str(path))
        database = dbmod.Database.open(str(path))
        with database.read() as session:
            store = Store(session)
            run_id = store.list_runs()[0].id
            last = store.list_days(run_id)[-1].index
        return database, run_id, last
    dbmod.upgrade(str(path))
    database = dbmod.Database.open(str(path))
    with database.write() as session:
        run_id = Store(session).create_run(SPEC, name="bench", model="bench:x").id
    last = seed_record(database, run_id, size)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        source = sqlite3.connect(path, isolation_level=None)
        try:  # a consistent copy, with the write-ahead log folded in
            source.execute("VACUUM INTO ?", (str(cached),))
        finally:
            source.close()
    return database, run_id, last


def prompt_text(store: Store, run_id: str, budget: int) -> str:
    view = build_view(store, run_id, SPEC.charter, DATE, budget)
    prompt = build_prompt(SPEC.persona, view, DATE)
    return "\n".join(content for _, content in prompt.messages)


def common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    step = 1024
    while i < n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return min(i, n)


def measure(
    size: int,
    budgets: list[int],
    cache: Path | None = None,
    repeats: int = 30,
    follow: int = 30,
) -> list[dict[str, float]]:
    """One row per budget, all measured on one seeded record in one run."""
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        database, run_id, last = seeded(size, Path(tmp), cache)
        seeding = time.perf_counter() - started
        with database.read() as session:
            naive = sum(
                estimate_tokens(ViewEntry.of(e, i).render())
                for e, i, _ in Store(session).list_entries(run_id, include_reverted=False)
            )
        for budget in budgets:
            times, tokens, reflexion_ms, reflexion_tokens = [], 0, [], 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                with database.read() as session:
                    view = build_view(Store(session), run_id, SPEC.charter, DATE, budget)
                times.append((time.perf_counter() - t0) * 1000)
                tokens = estimate_tokens(view.render())
                t0 = time.perf_counter()
                with database.read() as session:
                    found = Store(session).list_entries(
                        run_id, day_range=(max(1, last - 2), last), include_reverted=False
                    )
                    text = "\n".join(ViewEntry.of(e, i).render() for e, i, _ in found)
                reflexion_ms.append((time.perf_counter() - t0) * 1000)
                reflexion_tokens = estimate_tokens(text)
            times.sort()
            rows.append(
                {
                    "size": size,
                    "budget": budget,
                    "seed_s": seeding,
                    "p50": statistics.median(times),
                    "p95": times[int(0.95 * (len(times) - 1))],
                    "tokens": tokens,
                    "naive": naive,
                    "reflexion_ms": statistics.median(reflexion_ms),
                    "reflexion_tokens": reflexion_tokens,
                }
            )
        # Prefix stability: step ``follow`` more days; every budget sees the same days.
        shares: dict[int, list[float]] = {b: [] for b in budgets}
        with database.read() as session:
            before = {b: prompt_text(Store(session), run_id, b) for b in budgets}
        for index in range(last + 1, last + 1 + follow):
            with database.write() as session:
                add_seed_day(Store(session), run_id, index)
            with database.read() as session:
                now = {b: prompt_text(Store(session), run_id, b) for b in budgets}
            for b in budgets:
                shares[b].append(common_prefix(before[b], now[b]) / len(now[b]))
            before = now
        database.dispose()
    for row in rows:
        got = shares[int(row["budget"])]
        row["prefix_mean"] = statistics.mean(got)
        row["prefix_median"] = statistics.median(got)
        row["prefix_min"] = min(got)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000,10000,100000")
    parser.add_argument("--budgets", default="3000,16000")
    parser.add_argument("--cache", type=Path, help="keep seeded records here, for reuse")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    print(
        "| entries | budget | view p50 ms | view p95 ms | view tokens "
        "| whole-record tokens | last-3-days ms | last-3-days tokens "
        "| stable prefix mean / median / min |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        for r in measure(size, budgets, args.cache):
            print(
                f"| {r['size']:,} | {r['budget']:,} | {r['p50']:.1f} | {r['p95']:.1f} "
                f"| {r['tokens']:,} | {r['naive']:,} | {r['reflexion_ms']:.1f} "
                f"| {r['reflexion_tokens']:,} "
                f"| {r['prefix_mean']:.0%} / {r['prefix_median']:.0%} / {r['prefix_min']:.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
