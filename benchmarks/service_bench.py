"""Throughput and overhead of `loopsim serve`, printed as Markdown tables.

1. Days per second for C concurrent runs against a loopback OpenAI-compatible stub
   (loopsim.testing.stubserver, a process of its own, as a real server is; with
   --stub-in-process, a thread of this one, as in the earlier tables) with a fixed latency,
   through the client loopsim picks for such a server (its light one;
   LOOPSIM_OPENAI_CLIENT=langchain for langchain-openai), on the event loop `loopsim
   serve` picks (LOOPSIM_EVENT_LOOP=asyncio for asyncio's), against the ideal
   C / (latency x calls a day).
2. One `loopsim serve` process against two, on one PostgreSQL database.
3. Orchestrator overhead per day (check-in test, plan, view, commit) with an instant
   in-process model, at 10^2 and 10^5 entries in the record: the days of one
   `loopsim run step --days N`.
4. The same day loop in LangGraph with its SQLite checkpointer, measured in the same run
   (needs the `bench` extra).

    python benchmarks/service_bench.py [--window 8] [--skip-pg] [--skip-langgraph]
        [--only-overhead] [--rounds N] [--cache DIR] [--stub-in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loopsim.chat.handle import build_chat
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import EntryInput, Store
from loopsim.schemas import DayStatus, RunStatus, parse_spec
from loopsim.service.eventloop import new_event_loop
from loopsim.service.worker import Service, ServiceConfig
from loopsim.testing import add_day, scripted_factory
from loopsim.testing.stubserver import StubOpenAI, spawned

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


def committed(database: dbmod.Database) -> int:
    with database.read() as session:
        return int(
            session.scalar(
                sa.text("SELECT count(*) FROM days WHERE status = :s"), {"s": DayStatus.COMMITTED}
            )
            or 0
        )


def calls_made(database: dbmod.Database) -> int:
    """Model calls the record holds: one row per request made, retries included."""
    with database.read() as session:
        return int(session.scalar(sa.text("SELECT count(*) FROM calls")) or 0)


@contextlib.contextmanager
def stub_server(latency: float, in_process: bool = False) -> Iterator[str]:
    """The stub's base URL. By default the stub is a process of its own, so its CPU is
    not the measured worker's (a real model server never is); ``in_process`` runs it as
    a thread of this process instead."""
    if in_process:
        with StubOpenAI(latency=latency) as stub:
            yield stub.base_url
        return
    with spawned(latency) as base_url:
        yield base_url


def seed_runs(database: dbmod.Database, n: int) -> None:
    spec = parse_spec(SPEC)
    with database.write() as session:
        store = Store(session)
        for i in range(n):
            run = store.create_run(spec, name=f"bench-{i}", model="openai:stub-model")
            store.set_status(run, RunStatus.RUNNING)


# ------------------------------------------------------------------ 1. throughput


async def _measure(
    service: Service, database: dbmod.Database, warmup: float, window: float
) -> tuple[float, float]:
    """Days a second over the window, and model calls a day over the same window."""
    task = asyncio.ensure_future(service.serve(install_signals=False))
    await asyncio.sleep(warmup)
    before, calls, began = committed(database), calls_made(database), time.perf_counter()
    await asyncio.sleep(window)
    after, took = committed(database), time.perf_counter() - began
    calls = calls_made(database) - calls
    service.request_stop()
    await task
    days = after - before
    return days / took, (calls / days if days else float("nan"))


def throughput(
    concurrency: int,
    latency: float,
    window: float,
    url: str | None = None,
    stub_in_process: bool = False,
) -> tuple[float, float]:
    """Days a second of one worker over ``window`` seconds after a warm-up, and the model
    calls a day made meanwhile (a day of this spec makes more than one: the report, and
    digests every few days)."""
    with tempfile.TemporaryDirectory() as tmp:
        url = url or str(Path(tmp) / "bench.db")
        dbmod.upgrade(url)
        database = dbmod.Database.open(url)
        seed_runs(database, concurrency)
        with stub_server(latency, stub_in_process) as base_url:
            settings = Settings(model_base_url=base_url, model_timeout=60)
            config = ServiceConfig(
                worker_id="bench",
                concurrency=concurrency,
                poll_seconds=0.2,
                http_port=None,
                lease_seconds=60,
            )
            service = Service(database, settings, build_chat(settings), config)
            warmup = max(2.0, 2 * latency)
            # The event loop `loopsim serve` would run on (LOOPSIM_EVENT_LOOP, default auto).
            with asyncio.Runner(loop_factory=lambda: new_event_loop(settings.event_loop)) as run:
                measured = run.run(_measure(service, database, warmup, window))
        database.dispose()
        return measured


# --------------------------------------------------------------- 2. two workers


def pg_database() -> str:
    name = f"loopsim_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_pg(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def workers_on_pg(n_workers: int, runs: int, concurrency: int, latency: float, window: float):
    url = pg_database()
    try:
        dbmod.upgrade(url)
        database = dbmod.Database.open(url)
        seed_runs(database, runs)
        with stub_server(latency) as base_url:
            env = {
                **os.environ,
                "LOOPSIM_DATABASE_URL": url,
                "LOOPSIM_MODEL_BASE_URL": base_url,
            }
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "loopsim",
                        "serve",
                        "--http",
                        "off",
                        "--worker-id",
                        f"w{i}",
                        "--concurrency",
                        str(concurrency),
                        "--poll-seconds",
                        "0.2",
                        "--log-level",
                        "warning",
                    ],
                    env=env,
                )
                for i in range(n_workers)
            ]
            try:
                time.sleep(4)
                before, began = committed(database), time.perf_counter()
                time.sleep(window)
                rate = (committed(database) - before) / (time.perf_counter() - began)
            finally:
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                for proc in procs:
                    proc.wait(timeout=30)
        database.dispose()
        return rate
    finally:
        drop_pg(url)


# ---------------------------------------------------------------- 3. overhead


def seed_overhead(url: str, entries: int) -> str:
    """A record of ``entries`` note entries (five a day) in a fresh database at ``url``;
    its run id."""
    dbmod.upgrade(url)
    database = dbmod.Database.open(url)
    with database.write() as session:
        store = Store(session)
        run = store.create_run(parse_spec(SPEC), name="overhead", model="scripted:instant")
        run_id = run.id
        for index in range(1, entries // 5 + 1):
            items = [
                EntryInput("note", f"Note {index}.{k}", f"Forager count {index} {k} at patch.")
                for k in range(5)
            ]
            add_day(store, run_id, index, items)
    database.dispose()
    return run_id


def overhead(entries: int, days: int = 20, cache: Path | None = None) -> float:
    """Milliseconds per day with an instant model, on a record of ``entries`` entries.
    With ``cache``, the seeded record is kept there and copied for later calls."""
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "overhead.db")
        seed = cache / f"overhead-{entries}.db" if cache else None
        if seed is not None and seed.exists():
            shutil.copyfile(seed, url)
        else:
            seed_overhead(url, entries)
            if seed is not None:
                seed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(url, seed)
        database = dbmod.Database.open(url)
        with database.read() as session:
            run_id = Store(session).list_runs()[0].id
        factory, _ = scripted_factory()
        loop = Loop(database, Settings(), factory)
        loop.run_days(run_id, 1)  # warm caches
        # The days of one `loopsim run step --days N`: each day's check-in test, plan,
        # model call and commit, timed from one day's end to the next's.
        stamps = [time.perf_counter()]
        loop.run_days(run_id, days, on_day=lambda _result: stamps.append(time.perf_counter()))
        times = [after - before for before, after in itertools.pairwise(stamps)]
        database.dispose()
        return statistics.median(times) * 1000


# --------------------------------------------------------------- 4. langgraph


def langgraph_overhead(entries: int, days: int = 20) -> float | None:
    """The same day (read the log, call an instant model, append its entries) as a
    LangGraph node looping on itself, state checkpointed by SqliteSaver after each step."""
    try:
        import sqlite3
        from typing import TypedDict

        from langgraph.checkpoint.sqlite import SqliteSaver
        from langgraph.graph import END, StateGraph
    except ImportError:
        return None
    from langchain_core.messages import HumanMessage

    _factory, model = scripted_factory()

    class State(TypedDict):
        log: list[str]
        day: int
        until: int

    def researcher(state: State) -> dict[str, Any]:
        view = "\n".join(state["log"][-60:])  # a bounded view, like loopsim's
        reply = model.invoke([HumanMessage(f"{view}\n\nToday's date is 2025-06-02.")])
        return {"log": [*state["log"], reply.text], "day": state["day"] + 1}

    graph = StateGraph(State)
    graph.add_node("researcher", researcher)
    graph.set_entry_point("researcher")
    graph.add_conditional_edges(
        "researcher", lambda s: END if s["day"] >= s["until"] else "researcher"
    )
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(str(Path(tmp) / "lg.db"), check_same_thread=False)
        app = graph.compile(checkpointer=SqliteSaver(conn))
        cfg = {"configurable": {"thread_id": "bench"}, "recursion_limit": days * 4 + 10}
        seed = [f"Note {i}: forager count at patch {i}." for i in range(entries)]
        app.invoke({"log": seed, "day": 0, "until": 1}, cfg)  # warm up, write the seed
        began = time.perf_counter()
        app.invoke({"day": 0, "until": days}, cfg)
        took = time.perf_counter() - began
        conn.close()
        return took / days * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=8.0, help="seconds measured per row")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-langgraph", action="store_true")
    parser.add_argument("--skip-1024", action="store_true")
    parser.add_argument(
        "--only-overhead", action="store_true", help="only the overhead rows (3 and 4)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="overhead rounds, medians kept")
    parser.add_argument("--cache", type=Path, help="keep the overhead rows' seeded records here")
    parser.add_argument(
        "--stub-in-process",
        action="store_true",
        help="run the throughput rows' stub as a thread of this process (the old rows)",
    )
    args = parser.parse_args()
    if not args.only_overhead:
        throughput_rows(args)
    overhead_rows(args)


def throughput_rows(args: argparse.Namespace) -> None:
    print("### Days per second, one worker, SQLite, loopback stub\n")
    print(
        "The ideal is C / (latency x calls a day): every run always waiting on the model,"
        " and nothing else taking time; calls a day are counted over the same window.\n"
    )
    print("| C | latency | days/s | calls/day | ideal | of ideal |")
    print("|---:|---:|---:|---:|---:|---:|")
    cases = [(1, 0.05), (8, 0.05), (64, 0.05), (256, 0.05)]
    if not args.skip_1024:
        cases.append((1024, 2.0))
    for c, latency in cases:
        window = max(args.window, 3 * latency)
        rate, per_day = throughput(c, latency, window, stub_in_process=args.stub_in_process)
        ideal = c / (latency * per_day) if per_day == per_day else float("nan")
        print(
            f"| {c} | {latency * 1000:.0f} ms | {rate:.1f} | {per_day:.2f} | {ideal:.0f} |"
            f" {rate / ideal:.0%} |"
        )
        sys.stdout.flush()

    if not args.skip_pg:
        print("\n### One worker against two, PostgreSQL, 64 runs, 50 ms stub\n")
        print("| workers | concurrency each | days/s |")
        print("|---:|---:|---:|")
        for n in (1, 2):
            rate = workers_on_pg(n, runs=64, concurrency=64 // n, latency=0.05, window=args.window)
            print(f"| {n} | {64 // n} | {rate:.1f} |")
            sys.stdout.flush()


def overhead_rows(args: argparse.Namespace) -> None:
    """Each round measures both sides at each size in turn; the median round is shown."""
    print("\n### Orchestrator overhead per day, instant model, SQLite\n")
    print("| entries in record | loopsim ms/day | LangGraph + SqliteSaver ms/day | ratio |")
    print("|---:|---:|---:|---:|")
    for size in (100, 100_000):
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(overhead(size, cache=args.cache))
            found = None if args.skip_langgraph else langgraph_overhead(size)
            if found is not None:
                theirs.append(found)
        mine = statistics.median(ours)
        if theirs:
            other = statistics.median(theirs)
            shown, ratio = f"{other:.1f}", f"{mine / other:.2f}x"
        else:
            shown, ratio = "not installed", ""
        print(f"| {size:,} | {mine:.1f} | {shown} | {ratio} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
