"""Days per second of one worker process against two, on one PostgreSQL database.

Every row runs real `loopsim serve` processes against a loopback OpenAI-compatible stub
(loopsim.testing.stubserver, in this process) with a 50 ms latency, C runs per worker
and C runs queued per worker, and prints a Markdown table: days/s, the ideal
(workers x C / latency), the speed-up over one worker, the CPU each worker used (a core
is 100%), days per CPU-second the workers used (flat across rows: the cores are the
limit, not the database), the CPU of this process (the stub) and that of every PostgreSQL
process on the machine (a core is 100%). Rows:

- ``1 pinned``: one `loopsim serve`, pinned to core 0 with taskset when it exists;
- ``2 pinned``: two `loopsim serve` processes, pinned to cores 0 and 1;
- ``--processes 2``: one `loopsim serve --processes 2`, unpinned.

    python benchmarks/processes_bench.py [--window 15] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import DayStatus, RunStatus, parse_spec
from loopsim.testing.stubserver import StubOpenAI

PG_ADMIN = os.environ.get(
    "LOOPSIM_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SPEC = {
    "persona": {"name": "Bench", "background": "A benchmark persona."},
    "charter": {"agenda": "How do colonies weigh nectar quality against distance?"},
    "time": {"policy": "fixed", "anchor": "2025-06-02"},
    "budget": {"days": 1_000_000},
    "checkins": {"every_days": 100_000, "spot_check_probability": 0.0},
}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of every PostgreSQL process on this machine (the server and its
    backends), by pid: the share of the cores the database took from the workers."""
    found = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                found[int(comm.parent.name)] = cpu_seconds(int(comm.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found


def committed(database: dbmod.Database) -> int:
    with database.read() as session:
        return int(
            session.scalar(
                sa.text("SELECT count(*) FROM days WHERE status = :s"), {"s": DayStatus.COMMITTED}
            )
            or 0
        )


def fresh_pg(runs: int) -> str:
    name = f"loopsim_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    dbmod.upgrade(url)
    database = dbmod.Database.open(url)
    spec = parse_spec(SPEC)
    with database.write() as session:
        store = Store(session)
        for i in range(runs):
            run = store.create_run(spec, name=f"bench-{i}", model="openai:stub-model")
            store.set_status(run, RunStatus.RUNNING)
    database.dispose()
    return url


def drop_pg(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def measure(mode: str, workers: int, c: int, latency: float, warmup: float, window: float):
    """(days/s, CPU % per worker, CPU % of this process, CPU % of PostgreSQL, load
    average) for one row."""
    url = fresh_pg(workers * c)
    serve = ["-m", "loopsim", "serve", "--http", "off", "--concurrency", str(c)]
    serve += ["--poll-seconds", "0.2", "--log-level", "warning"]
    taskset = shutil.which("taskset")
    try:
        with StubOpenAI(latency=latency) as stub:
            env = {
                **os.environ,
                "LOOPSIM_DATABASE_URL": url,
                "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            }
            if mode == "pinned":
                cmds = []
                for i in range(workers):
                    pin = [taskset, "-c", str(i % (os.cpu_count() or 1))] if taskset else []
                    cmds.append([*pin, sys.executable, *serve, "--worker-id", f"w{i + 1}"])
            else:
                cmds = [[sys.executable, *serve, "--processes", str(workers), "--worker-id", "w"]]
            procs = [subprocess.Popen(cmd, env=env) for cmd in cmds]
            database = dbmod.Database.open(url)
            try:
                time.sleep(warmup)
                pids = [p.pid for p in procs]
                if mode != "pinned":
                    pids = children(procs[0].pid)
                before, cpu0, own0, pg0 = (
                    committed(database),
                    sum(map(cpu_seconds, pids)),
                    time.process_time(),
                    postgres_cpu(),
                )
                began = time.perf_counter()
                time.sleep(window)
                took = time.perf_counter() - began
                rate = (committed(database) - before) / took
                cpu = (sum(map(cpu_seconds, pids)) - cpu0) / took / max(1, len(pids))
                own = (time.process_time() - own0) / took
                pg = sum(t - pg0.get(pid, 0.0) for pid, t in postgres_cpu().items()) / took
                load = os.getloadavg()[0]
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                for proc in procs:
                    proc.wait(timeout=60)
                database.dispose()
        return rate, cpu, own, pg, load
    finally:
        drop_pg(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=15.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64, help="runs per worker")
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    c, latency = args.concurrency, args.latency
    print(f"taskset: {'yes' if shutil.which('taskset') else 'no'}; cores: {os.cpu_count()}\n")
    print(
        "| workers | how | C each | days/s | ideal | of ideal | vs 1 | CPU per worker "
        "| days per worker CPU-second | stub + bench CPU | PostgreSQL CPU | load avg (1 min) |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one = None
    for workers, mode in ((1, "pinned"), (2, "pinned"), (2, "processes")):
        rate, cpu, own, pg, load = measure(mode, workers, c, latency, args.warmup, args.window)
        one = rate if one is None else one
        ideal = workers * c / latency
        how = "taskset, own core" if mode == "pinned" else "`--processes 2`, unpinned"
        print(
            f"| {workers} | {how} | {c} | {rate:.1f} | {ideal:.0f} | {rate / ideal:.0%} | "
            f"{rate / one:.2f}x | {cpu:.0%} | {rate / max(cpu * workers, 1e-9):.1f} | {own:.0%} "
            f"| {pg:.0%} | {load:.1f} |"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
