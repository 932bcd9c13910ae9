"""How long a `loopsim serve` worker holds SQLite's write lock, and how often a freeze
lands while it holds it (issue 18 item 4). Prints Markdown tables.

Both run one worker with the default ``--concurrency`` (4) and R runs (2), so it has free
slots and looks for runs to claim every second, as most workers do.

1. Hold times: an in-process Service steps R runs against the loopback OpenAI-compatible
   stub for W seconds. Every write transaction is timed from the moment its
   ``BEGIN IMMEDIATE`` returned (the lock is taken) to the end of its ``COMMIT`` or
   ``ROLLBACK``, by kind (the loopsim function that began it): count, median, p99, max,
   and the share of the window the lock was held.
2. Freeze storm: a real ``loopsim serve`` process (default poll and lease) with R runs is
   stopped with SIGSTOP N times at random moments; while it is stopped a probe asks for
   the write lock with no busy timeout. A refusal means the freeze landed inside one of
   the worker's write transactions: every other writer would wait until it is resumed.
   ``--tree`` runs the worker from another checkout, to compare before and after.

    python benchmarks/freeze_bench.py [--runs 2] [--window 20] [--freezes 200]
        [--latency 0.2] [--tree PATH] [--skip-hold]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from loopsim.chat.handle import build_chat
from loopsim.config import Settings
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import RunStatus, parse_spec
from loopsim.service.worker import Service, ServiceConfig
from loopsim.testing import write_locked
from loopsim.testing.stubserver import StubOpenAI

SPEC = {
    "persona": {"name": "Bench", "background": "A benchmark persona."},
    "charter": {"agenda": "How do colonies weigh nectar quality against distance?"},
    "time": {"policy": "fixed", "anchor": "2025-06-02"},
    "budget": {"days": 1_000_000},
    "checkins": {"every_days": 100_000, "spot_check_probability": 0.0},
    "digests": {"every_days": 0},
}
KINDS = (
    "claim",
    "renew",
    "release",
    "commit",
    "complete",
    "_fail_run",
    "keep_calls",
    "open_checkin",
)


def make_database(folder: Path, runs: int) -> str:
    path = str(folder / "freeze.db")
    dbmod.upgrade(path)
    database = dbmod.Database.open(path)
    try:
        for i in range(runs):
            data = {**SPEC, "charter": {"agenda": f"Study number {i} of the bees."}}
            with database.write() as session:
                store = Store(session)
                run = store.create_run(parse_spec(data), name=f"r{i}", model="openai:stub-model")
                store.set_status(run, RunStatus.RUNNING)
    finally:
        database.dispose()
    return path


class HoldClock:
    """Times each write transaction from its lock to its end, by the function that
    began it."""

    def __init__(self, database: dbmod.Database) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self._local = threading.local()
        event.listen(database.engine, "begin", self._began)  # after loopsim's own BEGIN
        event.listen(Session, "after_commit", self._ended)
        event.listen(Session, "after_rollback", self._ended)

    def _began(self, conn: Any) -> None:
        if conn.get_execution_options().get("loopsim_begin") != "IMMEDIATE":
            return
        frame = sys._getframe(1)
        kind = "other"
        while frame is not None:
            if frame.f_code.co_name in KINDS and "loopsim" in frame.f_code.co_filename:
                kind = frame.f_code.co_name
                break
            frame = frame.f_back  # type: ignore[assignment]
        self._local.began = (kind, time.perf_counter())

    def _ended(self, _session: Any) -> None:
        began = getattr(self._local, "began", None)
        if began is not None:
            self._local.began = None
            self.samples[began[0]].append(time.perf_counter() - began[1])


def hold_times(runs: int, window: float, latency: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, StubOpenAI(latency=latency) as stub:
        database = dbmod.Database.open(make_database(Path(tmp), runs))
        clock = HoldClock(database)
        settings = Settings(model_base_url=stub.base_url, retry_initial_seconds=0.05)
        config = ServiceConfig(worker_id="bench", concurrency=4, http_port=None)
        service = Service(database, settings, build_chat(settings), config)

        async def serve() -> None:
            task = asyncio.ensure_future(service.serve(install_signals=False))
            await asyncio.sleep(window)
            service.request_stop()
            await task

        asyncio.run(serve())
        database.dispose()
    print(
        f"\nWrite transactions of one worker, {runs} runs, stub latency {latency} s, "
        f"{window:.0f} s window:\n"
    )
    print("| kind | count | median ms | p99 ms | max ms | lock held, share of window |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, values in sorted(clock.samples.items(), key=lambda kv: -sum(kv[1])):
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        print(
            f"| {kind} | {len(values)} | {statistics.median(values) * 1000:.1f} | "
            f"{p99 * 1000:.1f} | {max(values) * 1000:.1f} | {sum(values) / window:.2%} |"
        )


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def storm(runs: int, freezes: int, latency: float, tree: str | None) -> None:
    rng = random.Random(18)
    with tempfile.TemporaryDirectory() as tmp, StubOpenAI(latency=latency) as stub:
        path = make_database(Path(tmp), runs)
        env = {
            **os.environ,
            "LOOPSIM_DATABASE_URL": path,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
        }
        if tree:
            env["PYTHONPATH"] = tree
        log = open(Path(tmp) / "serve.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopsim", "serve", "--http", "off", "-c", "4"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        inside = 0
        try:
            deadline = time.monotonic() + 120
            while len(stub.requests) < runs:  # working, not starting
                assert time.monotonic() < deadline, "the worker never called the model"
                time.sleep(0.1)
            for _ in range(freezes):
                time.sleep(rng.uniform(0.05, 0.6))
                proc.send_signal(signal.SIGSTOP)
                while not stopped(proc.pid):
                    time.sleep(0.001)
                inside += write_locked(path)
                proc.send_signal(signal.SIGCONT)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
    label = tree or "this tree"
    print(f"| {label} | {runs} | {latency} | {freezes} | {inside} | {inside / freezes:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--freezes", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--tree", action="append", default=[], help="another checkout")
    parser.add_argument("--skip-hold", action="store_true")
    args = parser.parse_args()
    if not args.skip_hold:
        hold_times(args.runs, args.window, args.latency)
    print("\nFreezes (SIGSTOP at random moments) that landed inside a write transaction:\n")
    print("| worker code | runs | stub latency s | freezes | inside a write | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for tree in [*args.tree, None]:
        storm(args.runs, args.freezes, args.latency, tree)


if __name__ == "__main__":
    main()
