"""A SIGKILL storm on `loopsim serve`: does it commit days between the kills?

A worker that takes longer to reach its first claim than the gap between two kills
never commits a day, however sound its record: a supervisor that restarts a crashing
worker, on a busy machine, would then make no progress at all. This script starts a
real ``loopsim serve`` over and over against one database, and SIGKILLs each one a random
3 to 12 seconds after it was started (counted from the start of the process, not from
any log line, so slow start-up counts against it), then starts the next at once. Every
start has the same ``--worker-id``, as a supervisor should give it (docs/service.md): a
worker takes back its own runs at once, where a new id would wait out the dead one's
leases (``--worker-id ''`` shows that).

The database holds R runs queued with ``run start``; their model is the OpenAI-compatible
stub on 127.0.0.1 (``loopsim.testing.stubserver``, in this process) with a fixed
latency. After each kill it counts the committed days; at the end, ``record verify``
checks every run's hash chain and ``db check`` the file. It prints one Markdown table:
kills, the kills whose interval committed at least one day, days committed, the median
days an interval, and the median time from a start to its first claim.

    python benchmarks/kill_storm.py [--kills 20] [--runs 4] [--latency 0.05]
        [--min 3] [--max 12] [--seed 7] [--pg] [--worker-id ID]

Run it on a quiet machine and again with every core busy (``yes > /dev/null`` once per
core) to see what a loaded machine does to it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import service_bench  # its spec and PostgreSQL helpers; as a script, this folder is on the path

from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import RunStatus, parse_spec
from loopsim.testing.stubserver import StubOpenAI


def queue_runs(url: str, runs: int) -> list[str]:
    """``runs`` runs on the stub's model, queued as `run start` does, with a budget no
    storm reaches and no check-in to stop them (the storm is about the worker)."""
    database = dbmod.Database.open(url)
    try:
        with database.write() as session:
            store = Store(session)
            ids = []
            for n in range(runs):
                spec = parse_spec(service_bench.SPEC)
                run = store.create_run(spec, name=f"storm-{n}", model="openai:stub")
                store.set_status(run, RunStatus.RUNNING)
                ids.append(run.id)
            return ids
    finally:
        database.dispose()


def committed(url: str) -> int:
    database = dbmod.Database.open(url)
    try:
        return service_bench.committed(database)
    finally:
        database.dispose()


class Start:
    """One ``loopsim serve``; notes when its first claim and its first committed day are
    logged (``lease.claimed``, ``day.committed``)."""

    def __init__(self, env: dict[str, str], cwd: Path, worker_id: str) -> None:
        self.started = time.monotonic()
        self.first_claim: float | None = None
        self.first_day: float | None = None
        argv = [sys.executable, "-m", "loopsim", "serve", "--http", "off", "--log-format", "json"]
        if worker_id:
            argv += ["--worker-id", worker_id]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if not line.startswith("{"):
                continue
            event = json.loads(line).get("event")
            if event == "lease.claimed" and self.first_claim is None:
                self.first_claim = time.monotonic() - self.started
            elif event == "day.committed" and self.first_day is None:
                self.first_day = time.monotonic() - self.started

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join(timeout=10)


def check(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "loopsim", *argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    return "ok" if done.returncode == 0 else f"FAILED ({done.returncode}): {done.stderr.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--runs", type=int, default=4, help="runs queued")
    parser.add_argument("--latency", type=float, default=0.05, help="the stub's seconds a call")
    parser.add_argument("--min", type=float, default=3.0, help="shortest life of a worker, s")
    parser.add_argument("--max", type=float, default=12.0, help="longest life of a worker, s")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--pg", action="store_true", help="a fresh PostgreSQL database (default: SQLite)"
    )
    parser.add_argument(
        "--worker-id",
        default="storm",
        help="every start's --worker-id, as a supervisor gives it ('': serve's HOST:PID)",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp, StubOpenAI(latency=args.latency) as stub:
        where = Path(tmp)
        url = service_bench.pg_database() if args.pg else str(where / "storm.db")
        try:
            env = {
                **os.environ,
                "LOOPSIM_DATABASE_URL": url,
                "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            }
            dbmod.upgrade(url)
            ids = queue_runs(url, args.runs)
            per_interval: list[int] = []
            claims: list[float] = []
            firsts: list[float] = []
            unclaimed = 0
            before = committed(url)
            for _ in range(args.kills):
                start = Start(env, where, args.worker_id)
                try:
                    time.sleep(rng.uniform(args.min, args.max))
                finally:
                    start.kill()
                if start.first_claim is None:
                    unclaimed += 1
                else:
                    claims.append(start.first_claim)
                if start.first_day is not None:
                    firsts.append(start.first_day)
                now = committed(url)
                per_interval.append(now - before)
                before = now
            verified = next(
                (v for v in (check(["record", "verify", i], env, where) for i in ids) if v != "ok"),
                "ok",
            )
            checked = check(["db", "check"], env, where)
        finally:
            if args.pg:
                service_bench.drop_pg(url)

    kind = "PostgreSQL" if args.pg else "SQLite"
    productive = sum(1 for n in per_interval if n > 0)
    print(
        "| database | worker id | kills | lives, s | intervals with a day | days "
        "| days an interval, median | first claim, s (median, max) | never claimed "
        "| first day, s (median, max) "
        "| record verify | db check |"
    )
    print("|---|---|---:|---|---:|---:|---:|---|---:|---|---|---|")
    claim = f"{statistics.median(claims):.2f}, {max(claims):.2f}" if claims else "none"
    first = f"{statistics.median(firsts):.2f}, {max(firsts):.2f}" if firsts else "none"
    print(
        f"| {kind} | {args.worker_id or 'HOST:PID'} | {args.kills} | {args.min:g} to {args.max:g} "
        f"| {productive} of {args.kills} "
        f"| {sum(per_interval)} | {statistics.median(per_interval):g} | {claim} | {unclaimed} "
        f"| {first} "
        f"| {verified} | {checked} |"
    )


if __name__ == "__main__":
    main()
