"""What tracing costs a day, and what `loopsim calls` costs to read a run's calls.

Part 1: ``Loop.step`` with an instant scripted model (one day report and one critic call
a day), on a fresh SQLite record, with tracing off (nothing listens: no trace is built)
and with langchain's run collector on (each day one trace, its calls nested). The rounds
interleave the two, so the machine's drift falls on both alike; the table gives the
median and p95 milliseconds a day.

Part 2: reading every call of a run back as records (``loopsim calls --json`` without the
process start), for runs of growing length.

    python benchmarks/tracing_bench.py [--days 40] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.tracers.context import collect_runs

from loopsim.config import Settings
from loopsim.exports.calls import call_records
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import parse_spec
from loopsim.testing import amplified_reply, scripted_factory

SPEC: dict[str, Any] = {
    "persona": {"name": "Dr. Bench", "background": "A field ecologist.", "style": "Plain."},
    "charter": {"agenda": "Understand how honeybee colonies choose where to forage."},
    "time": {"policy": "fixed", "anchor": "2025-06-02"},
    "budget": {"days": 100000, "output_tokens_per_day": 400},
    "checkins": {"every_days": 100000, "spot_check_probability": 0.0},
    "digests": {"every_days": 0},
    "babble": {"ideas": 1},
}


def fresh(directory: Path, name: str) -> tuple[dbmod.Database, Loop, str]:
    url = str(directory / f"{name}.db")
    dbmod.upgrade(url)
    database = dbmod.Database.open(url)
    factory, _ = scripted_factory([amplified_reply])
    loop = Loop(database, Settings(database_url=url), factory)
    with database.write() as session:
        run_id = Store(session).create_run(parse_spec(SPEC), name=name, model="scripted:b").id
    loop.start(run_id)
    return database, loop, run_id


def step_ms(loop: Loop, run_id: str, days: int, traced: bool) -> list[float]:
    out = []
    for _ in range(days):
        began = time.perf_counter()
        if traced:
            with collect_runs():
                loop.step(run_id)
        else:
            loop.step(run_id)
        out.append((time.perf_counter() - began) * 1000)
    return out


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.95) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--days", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        runs = {mode: fresh(directory, mode) for mode in ("off", "on")}
        times: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for mode, (_db, loop, run_id) in runs.items():
                times[mode] += step_ms(loop, run_id, args.days, mode == "on")
        print("| tracing | days | ms a day p50 | ms a day p95 |")
        print("|---|---:|---:|---:|")
        for mode, values in times.items():
            label = "off (nothing listens)" if mode == "off" else "on (run collector)"
            median = statistics.median(values)
            print(f"| {label} | {len(values)} | {median:.1f} | {p95(values):.1f} |")
        print()
        database, loop, run_id = runs["off"]
        print("| days | calls | read all ms (p50 of 5) | JSON MB |")
        print("|---:|---:|---:|---:|")
        with database.read() as session:
            store = Store(session)
            run = store.get_run(run_id)
            samples = []
            for _ in range(5):
                began = time.perf_counter()
                records = call_records(store, run)
                samples.append((time.perf_counter() - began) * 1000)
            size = len(json.dumps(records)) / 1e6
        days = args.days * args.rounds
        print(f"| {days} | {len(records)} | {statistics.median(samples):.0f} | {size:.1f} |")
        for db, _loop, _run in runs.values():
            db.dispose()


if __name__ == "__main__":
    main()
