"""Model calls per second and CPU per call of one process, for each client of
OpenAI-compatible servers, printed as a Markdown table.

C tasks call ``ChatHandle.acomplete`` back to back (the path ``loopsim serve`` takes, with
retries, the DayReport ``response_format`` and langchain-core's callbacks) against
loopsim.testing.stubserver run as a separate process on 127.0.0.1 with a fixed latency,
so this process's CPU is the client's alone. Clients: ``light`` (loopsim/chat/compat.py)
and ``langchain`` (langchain-openai and the openai SDK), interleaved, median of the
repeats.

    python benchmarks/client_bench.py [--seconds 5] [--repeats 3] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from langchain_core.messages import HumanMessage, SystemMessage

from loopsim.chat.handle import build_chat
from loopsim.config import Settings
from loopsim.schemas import DayReport, ModelSpec
from loopsim.testing.stubserver import spawned

SCHEMA = DayReport.model_json_schema()
MESSAGES = [
    SystemMessage("You are a careful researcher. " * 40),
    HumanMessage("The log so far. " * 200 + "Today's date is 2025-06-02."),
]


async def calls(
    base_url: str, client: str, concurrency: int, seconds: float
) -> tuple[int, float, float]:
    settings = Settings(model_base_url=base_url, openai_client=client, model_timeout=60)
    handle = build_chat(settings)("openai:stub-model", ModelSpec(), 400)
    await handle.acomplete(MESSAGES, SCHEMA, seed=0)  # connect, import, warm up
    done = 0
    stop = time.monotonic() + seconds

    async def loop(seed: int) -> None:
        nonlocal done
        while time.monotonic() < stop:
            await handle.acomplete(MESSAGES, SCHEMA, seed=seed)
            done += 1

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return done, time.perf_counter() - began, time.process_time() - cpu


async def table(base_url: str, args: argparse.Namespace) -> None:
    # One event loop for every row: langchain-openai keeps one httpx client per base URL
    # for the whole process, whose connections cannot outlive their loop.
    print(f"### Model calls per second, one process, stub at {args.latency * 1000:.0f} ms\n")
    print("| C | client | calls/s | ideal | CPU ms per call | load avg (1 min) |")
    print("|---:|---|---:|---:|---:|---:|")
    for c in args.concurrency:
        rates: dict[str, list[float]] = {"light": [], "langchain": []}
        costs: dict[str, list[float]] = {"light": [], "langchain": []}
        for _ in range(args.repeats):
            for client in rates:
                done, wall, cpu = await calls(base_url, client, c, args.seconds)
                rates[client].append(done / wall)
                costs[client].append(cpu / max(1, done) * 1000)
        for client in rates:
            print(
                f"| {c} | {client} | {statistics.median(rates[client]):.0f} | "
                f"{c / args.latency:.0f} | {statistics.median(costs[client]):.2f} | "
                f"{os.getloadavg()[0]:.1f} |"
            )
            sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 64, 256])
    args = parser.parse_args()
    with spawned(args.latency) as base_url:
        asyncio.run(table(base_url, args))


if __name__ == "__main__":
    main()
