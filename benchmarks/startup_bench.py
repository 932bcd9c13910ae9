"""What a command costs before it does anything: CPU seconds of short `loopsim` commands
against `python -c 'import sqlalchemy'`, measured in the same run.

Each command runs as a fresh process, N times; its CPU time (user + system) is the
change in ``resource.getrusage(RUSAGE_CHILDREN)`` across the run, and the table gives the
median. The commands read a small database made for the purpose: ``db upgrade`` and one
``run create`` from ``examples/``, with no days stepped (no model is loaded). An untimed
round first writes and warms the bytecode caches, as an installed loopsim has them; the
timed rounds interleave the commands, so the machine's drift falls on all of them alike.

A third baseline imports only the libraries every command that reads the record needs
(SQLAlchemy's ORM, Typer, rich, pydantic-settings): the floor no such command can go
under.

A second table times ``loopsim serve`` from its start to its first claim: a SQLite file
holds one run queued with ``run start`` whose model is the OpenAI-compatible stub server
on 127.0.0.1 (``loopsim.testing.stubserver``); each round starts ``serve --http off
--log-format json``, waits for the ``lease.claimed`` event on stderr and reads the wall
time and the process's CPU seconds at that moment, then stops it with SIGTERM (which
releases the lease, so the next round claims the same run; the stub answers slowly, so
no day commits in between).

``llm logs list -n 1`` (simonw/llm, a CLI that logs LLM work to SQLite) is measured too
when an ``llm`` command is found beside this Python or on PATH, or given with ``--llm``.

    python benchmarks/startup_bench.py [--rounds 5] [--serve-rounds 5] [--llm PATH]
        [--against CHECKOUT]

``--against`` times the reading commands of another checkout too (an earlier commit, say),
interleaved with this one's, so that a change is measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = "sqlalchemy.orm, typer, rich.table, pydantic_settings"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "bee-foraging.toml"


def cpu_seconds(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """User + system CPU seconds of one run of ``argv``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def find_llm(given: str | None) -> str | None:
    if given:
        return given
    beside = Path(sys.executable).parent / "llm"
    if beside.exists():
        return str(beside)
    return shutil.which("llm")


def make_llm_logs(llm: str, path: Path) -> None:
    """An empty logs database of llm's own schema, which llm creates only when it logs a
    prompt: with the Python of llm's environment, its own migrations."""
    path.parent.mkdir()
    python = Path(llm).parent / "python"
    make = (
        "import sys, sqlite_utils; from llm.migrations import migrate; "
        "migrate(sqlite_utils.Database(sys.argv[1]))"
    )
    subprocess.run([str(python), "-c", make, str(path)], check=True)


def cpu_of(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def queue_one_run(url: str) -> None:
    """One run of the example spec on the stub's model, queued as `run start` does."""
    from loopsim.record import db as dbmod
    from loopsim.record.store import Store
    from loopsim.schemas import RunStatus, load_spec

    database = dbmod.Database.open(url)
    try:
        with database.write() as session:
            store = Store(session)
            run = store.create_run(load_spec(EXAMPLE), name="serve", model="openai:stub-model")
            store.set_status(run, RunStatus.RUNNING)
    finally:
        database.dispose()


def serve_to_first_claim(env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds from starting `loopsim serve` to its first `lease.claimed`."""
    argv = [sys.executable, "-m", "loopsim", "serve", "--http", "off", "--log-format", "json"]
    argv += ["--grace-seconds", "0"]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line).get("event") == "lease.claimed":
                return time.monotonic() - started, cpu_of(proc.pid)
        sys.exit(f"serve exited {proc.wait()} before its first claim")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def measure_serve(rounds: int, where: Path, env: dict[str, str]) -> None:
    from loopsim.testing.stubserver import StubOpenAI

    # The stub answers after a minute, so no day commits before the SIGTERM (grace 0)
    # abandons it: the run stays queued at its first day for every round.
    with StubOpenAI(latency=60) as stub:
        url = str(where / "serve.db")
        serve_env = {**env, "LOOPSIM_DATABASE_URL": url, "LOOPSIM_MODEL_BASE_URL": stub.base_url}
        subprocess.run(
            [sys.executable, "-m", "loopsim", "db", "upgrade"],
            env=serve_env,
            cwd=where,
            check=True,
            stderr=subprocess.DEVNULL,
        )
        queue_one_run(url)
        serve_to_first_claim(serve_env, where)  # untimed: writes the bytecode caches
        figures = [serve_to_first_claim(serve_env, where) for _ in range(rounds)]
    walls = [wall for wall, _ in figures]
    cpus = [cpu for _, cpu in figures]
    print(f"\n| `loopsim serve`, start to first claim | median of {rounds} | min | max |")
    print("|---|---:|---:|---:|")
    print(f"| wall s | {statistics.median(walls):.3f} | {min(walls):.3f} | {max(walls):.3f} |")
    print(f"| CPU s | {statistics.median(cpus):.3f} | {min(cpus):.3f} | {max(cpus):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each command")
    parser.add_argument("--serve-rounds", type=int, default=5, help="starts of serve (0: none)")
    parser.add_argument("--llm", help="the `llm` command, if not found by itself")
    parser.add_argument(
        "--against", help="another loopsim checkout, to time its reading commands beside"
    )
    args = parser.parse_args()

    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp)
        # Bytecode caches are written (and warmed by the untimed round below), as an
        # installed loopsim has them: without them every run compiles loopsim's modules.
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
            "LOOPSIM_DATABASE_URL": str(where / "bench.db"),
        }
        loopsim = [python, "-m", "loopsim"]
        subprocess.run(
            [*loopsim, "db", "upgrade"], env=env, cwd=where, check=True, stderr=subprocess.DEVNULL
        )
        run_id = subprocess.run(
            [*loopsim, "run", "create", str(EXAMPLE)],
            env=env,
            cwd=where,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        commands: list[tuple[str, list[str], dict[str, str]]] = [
            ("python -c pass", [python, "-c", "pass"], env),
            ("python -c 'import sqlalchemy'", [python, "-c", "import sqlalchemy"], env),
            # What every command that reads the record cannot do without: the ORM, the
            # CLI's libraries and the settings. No read command can cost less.
            (f"python -c 'import {FLOOR}'", [python, "-c", f"import {FLOOR}"], env),
            # The floor's parts one by one, to see which of them the 1.5x target rules out.
            *(
                (f"python -c 'import {part}'", [python, "-c", f"import {part}"], env)
                for part in FLOOR.split(", ")
            ),
            ("loopsim --version", [*loopsim, "--version"], env),
            ("loopsim run list", [*loopsim, "run", "list"], env),
            ("loopsim run show RUN", [*loopsim, "run", "show", run_id], env),
            ("loopsim record show RUN", [*loopsim, "record", "show", run_id], env),
            ("loopsim checkin list", [*loopsim, "checkin", "list"], env),
        ]
        if args.against:
            # The same reading commands, run by another checkout's loopsim (its package
            # first on the path), interleaved with this one's: a before/after in one run.
            other = {**env, "PYTHONPATH": str(Path(args.against).resolve())}
            commands += [
                (f"{name} (--against)", argv, other)
                for name, argv, _ in commands
                if name.startswith("loopsim ") and name != "loopsim --version"
            ]
        llm = find_llm(args.llm)
        if llm is not None:
            llm_env = {**env, "LLM_USER_PATH": str(where / "llm")}
            make_llm_logs(llm, where / "llm" / "logs.db")
            commands.append(("llm logs list -n 1", [llm, "logs", "list", "-n", "1"], llm_env))

        for _, argv, run_env in commands:
            cpu_seconds(argv, run_env, where)
        times: dict[str, list[float]] = {name: [] for name, _, _ in commands}
        for _ in range(args.rounds):
            for name, argv, run_env in commands:
                times[name].append(cpu_seconds(argv, run_env, where))

    base = statistics.median(times["python -c 'import sqlalchemy'"])
    print(f"| command | CPU s (median of {args.rounds}) | against `import sqlalchemy` |")
    print("|---|---:|---:|")
    for name, _, _ in commands:
        median = statistics.median(times[name])
        print(f"| `{name}` | {median:.3f} | {median / base:.2f}x |")
    if llm is None:
        print("\n`llm` (simonw/llm) is not installed here: `llm logs list -n 1` not measured.")
    if args.serve_rounds:
        with tempfile.TemporaryDirectory() as tmp:
            measure_serve(args.serve_rounds, Path(tmp), env)


if __name__ == "__main__":
    main()
