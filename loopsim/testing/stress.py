"""Many real loopsim processes on one SQLite file, for a bounded time: a stress harness.

    python -m loopsim.testing.stress --db stress.db --seconds 600

It runs, all at once and each in its own process: ``loopsim serve`` workers killed with
SIGKILL or stopped with SIGTERM at random moments and restarted after a random pause;
``run create`` and ``run start`` about once a second; ``checkin decide`` on whatever is
pending; ``loopsim demo`` over and over (it opens the database several times in one
process); a script that opens the database twice through the Python API and writes
through both; and a reader that runs ``PRAGMA integrity_check`` and ``record verify`` in
short-lived processes. The model is :mod:`loopsim.testing.stubserver` on 127.0.0.1.

Every command's exit code and stderr are kept. It reports malformed reads (any "malformed",
"disk image" or "not a database" message, any traceback), failed integrity checks and
failed verifications, then checks the whole file once more after every process has
stopped. Exit 1 if any was seen. Run it on the disk you mean to keep records on: it is
also a quick check that a filesystem keeps SQLite's locking promises.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopsim.testing.stubserver import StubOpenAI

# Signs of a damaged file or a bug in what any process printed.
BAD_SIGNS = ("malformed", "disk image", "not a database", "traceback", "not a readable loopsim")
# Errors a busy but healthy database gives a racing CLI: deciding a check-in someone else
# decided, starting a run a worker already finished, and so on.
# A run that `demo` steps is also claimed by `serve`; one of them loses the race for
# the day, and nothing of its copy is written.
EXPECTED = (
    "already decided",
    "cannot make it",
    "no check-in",
    "is not open",
    "no run",
    "committed by another process",
)

SPEC_TOML = """\
probes = ["How far will a forager fly for rich nectar?"]

[persona]
name = "Dr. Stress Test"
background = "A field ecologist who studies pollinators."

[charter]
agenda = "Understand how honeybee colonies choose where to forage."
open_questions = ["How do colonies weigh distance against nectar quality?"]

[time]
policy = "fixed"
anchor = 2025-06-02

[budget]
days = 100000

[checkins]
every_days = 3
spot_check_probability = 0.1
probes_per_checkin = 1
future_leak = false

[digests]
every_days = 0
"""

# Opens the database twice in one process through the Python API, writes through both,
# closes the second and writes again through the first, with pauses between, over and
# over: the first connection's locks must survive the second's open and close.
DOUBLE_OPEN = """\
import sys, time
from pathlib import Path
from loopsim.record.db import Database
from loopsim.schemas import load_spec
from loopsim.record.store import Store
url, spec_path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = load_spec(Path(spec_path))
first = Database.open(url)
for i in range(rounds):
    with first.write() as session:
        Store(session).create_run(spec, name=f"double-{i}a", model="openai:stub-model")
    second = Database.open(url)
    with second.read() as session:
        Store(session).list_runs()
    second.dispose()
    time.sleep(0.3)
    with first.write() as session:
        Store(session).create_run(spec, name=f"double-{i}b", model="openai:stub-model")
    with first.read() as session:
        Store(session).list_runs()
    time.sleep(0.3)
first.dispose()
"""

# Every run's chain, recomputed in one process through loopsim's own store.
VERIFY_ALL = """\
import sys
from loopsim.record.db import Database
from loopsim.record.store import Store
database = Database.open(sys.argv[1])
with database.read() as session:
    store = Store(session)
    for run in store.list_runs():
        result = store.verify_chain(run.id)
        print(run.id, "ok" if result.ok else result.broken.describe())
database.dispose()
"""

INTEGRITY = """\
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30)
try:
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
finally:
    conn.close()
print("ok" if rows == ["ok"] else "; ".join(rows[:5]))
"""


@dataclass
class Tally:
    """What each actor did and saw."""

    commands: Counter[str] = field(default_factory=Counter)
    expected_errors: Counter[str] = field(default_factory=Counter)
    busy: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    integrity_checks: int = 0
    verifies: int = 0
    serve_kills: int = 0
    serve_terms: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, actor: str, what: str) -> None:
        line = " ".join(what.split())[:300]
        with self.lock:
            self.problems.append(f"{actor}: {line}")


class Harness:
    def __init__(self, db: Path, seconds: float, workers: int, seed: int, work: Path) -> None:
        self.db = db
        self.seconds = seconds
        self.workers = workers
        self.rng = random.Random(seed)
        self.work = work
        self.tally = Tally()
        self.stop = threading.Event()
        self.spec = work / "stress.toml"
        self.spec.write_text(SPEC_TOML, encoding="utf-8")
        self.stub = StubOpenAI(latency=0.05)
        self.env: dict[str, str] = {}

    # ----------------------------------------------------------------- processes

    def loopsim(
        self, actor: str, *argv: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "loopsim", "--db", str(self.db), *argv]
        try:
            proc = subprocess.run(
                cmd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            self.tally.problem(actor, f"{' '.join(argv[:2])} hung past {timeout:.0f} s")
            return subprocess.CompletedProcess(cmd, -9, "", "")
        what = " ".join(word for word in argv[:2] if not word.startswith("-"))
        self.judge(actor, what, proc.returncode, proc.stderr)
        return proc

    def judge(self, actor: str, what: str, code: int, stderr: str) -> None:
        low = stderr.lower()
        with self.tally.lock:
            self.tally.commands[what] += 1
        if any(sign in low for sign in BAD_SIGNS):
            bad = (
                next(ln for ln in stderr.splitlines()[::-1] if ln.strip()) if stderr.strip() else ""
            )
            self.tally.problem(actor, f"{what} exited {code}: {bad}")
        elif code != 0 and code not in (-signal.SIGKILL, -signal.SIGTERM):
            with self.tally.lock:
                if "locked" in low:
                    self.tally.busy[what] += 1
                elif any(sign in low for sign in EXPECTED):
                    self.tally.expected_errors[what] += 1
                else:
                    self.tally.problems.append(
                        f"{actor}: {what} exited {code}: {stderr.strip()[-300:]}"
                    )

    def pause(self, low: float, high: float) -> bool:
        """Sleep a random while; False once the harness is stopping."""
        return not self.stop.wait(self.rng.uniform(low, high))

    # -------------------------------------------------------------------- actors

    def serve(self, number: int) -> None:
        log = self.work / f"serve-{number}.log"
        while not self.stop.is_set():
            with log.open("w") as handle:
                proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "loopsim",
                        "--db",
                        str(self.db),
                        "serve",
                        "--http",
                        "off",
                        "--poll-seconds",
                        "0.2",
                        "--lease-seconds",
                        "5",
                        "--grace-seconds",
                        "2",
                        "--worker-id",
                        f"stress-{number}",
                    ],
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=handle,
                    stdin=subprocess.DEVNULL,
                )
                self.stop.wait(self.rng.uniform(2, 12))
                kill = self.rng.random() < 0.5
                proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    code = proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                    self.tally.problem(f"serve-{number}", "did not stop within 60 s of SIGTERM")
            with self.tally.lock:
                if kill:
                    self.tally.serve_kills += 1
                else:
                    self.tally.serve_terms += 1
            self.judge(
                f"serve-{number}", "serve", 0 if not kill and code == 0 else code, log.read_text()
            )
            # Down for a while now and then: the other processes may then be the only
            # ones holding the file, which is when lost locks do their damage.
            self.pause(0.2, 4)

    def creator(self) -> None:
        while self.pause(0.5, 1.5):
            made = self.loopsim("creator", "run", "create", str(self.spec))
            run_id = made.stdout.strip()
            if made.returncode == 0 and run_id:
                self.loopsim("creator", "run", "start", run_id)

    def decider(self) -> None:
        while self.pause(1, 3):
            listed = self.loopsim("decider", "checkin", "list", "--pending", "--json")
            if listed.returncode != 0:
                continue
            with contextlib.suppress(ValueError):
                pending = [row["id"] for row in json.loads(listed.stdout)]
                for checkin_id in pending[:3]:
                    # No human answers here: approving needs --skip-probes to say so.
                    choice = self.rng.choice(["--approve", "--approve", "--approve", "--reject"])
                    extra = ["--skip-probes"] if choice == "--approve" else []
                    self.loopsim("decider", "checkin", "decide", str(checkin_id), choice, *extra)

    def demo(self) -> None:
        n = 0
        while self.pause(0.1, 2):
            n += 1
            report = self.work / f"demo-{n % 2}.md"
            self.loopsim(
                "demo", "demo", "--days", "6", "--spec", str(self.spec), "--report", str(report)
            )

    def double_open(self) -> None:
        while self.pause(0.1, 1):
            cmd = [sys.executable, "-c", DOUBLE_OPEN, str(self.db), str(self.spec), "10"]
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
            self.judge("double-open", "double-open", proc.returncode, proc.stderr)

    def reader(self) -> None:
        while self.pause(0.5, 1.5):
            proc = subprocess.run(
                [sys.executable, "-c", INTEGRITY, str(self.db)],
                capture_output=True,
                text=True,
                timeout=300,
            )
            with self.tally.lock:
                self.tally.integrity_checks += 1
            verdict = proc.stdout.strip()
            if proc.returncode != 0 or verdict != "ok":
                self.tally.problem(
                    "reader", f"integrity_check: {verdict or proc.stderr.strip()[-300:]}"
                )
            if self.rng.random() < 0.3:
                self.verify_all("reader")

    def verify_all(self, actor: str) -> None:
        listed = self.loopsim(actor, "run", "list", "--json")
        if listed.returncode != 0:
            return
        try:
            runs = [row["id"] for row in json.loads(listed.stdout)]
        except ValueError:
            self.tally.problem(actor, "run list --json printed no JSON")
            return
        for run_id in self.rng.sample(runs, min(len(runs), 3)) if actor == "reader" else runs:
            verified = self.loopsim(actor, "record", "verify", run_id)
            with self.tally.lock:
                self.tally.verifies += 1
            if verified.returncode == 1 and "broken" in (verified.stdout + verified.stderr).lower():
                self.tally.problem(
                    actor, f"record verify {run_id}: {verified.stdout.strip()[-200:]}"
                )

    # ----------------------------------------------------------------------- run

    def run(self) -> dict[str, Any]:
        base_url = self.stub.start()
        self.env = {
            **os.environ,
            "LOOPSIM_DATABASE_URL": str(self.db),
            "LOOPSIM_MODEL": "openai:stub-model",
            "LOOPSIM_MODEL_BASE_URL": base_url,
            "LOOPSIM_API_KEY": "stress-test-key",
            "LOOPSIM_RETRY_INITIAL_SECONDS": "0.05",
            "LOOPSIM_MODEL_TIMEOUT": "10",
        }
        started = time.monotonic()
        try:
            self.loopsim("setup", "db", "upgrade")
            for _ in range(4):
                made = self.loopsim("setup", "run", "create", str(self.spec))
                self.loopsim("setup", "run", "start", made.stdout.strip())
            actors = [threading.Thread(target=self.serve, args=(i,)) for i in range(self.workers)]
            actors += [
                threading.Thread(target=target)
                for target in (self.creator, self.decider, self.demo, self.double_open, self.reader)
            ]
            for actor in actors:
                actor.daemon = True
                actor.start()
            self.stop.wait(self.seconds)
            self.stop.set()
            for actor in actors:
                actor.join(300)
            # Every process has stopped: one last look at the whole file.
            final = subprocess.run(
                [sys.executable, "-c", INTEGRITY, str(self.db)], capture_output=True, text=True
            ).stdout.strip()
            if final != "ok":
                self.tally.problem("final", f"integrity_check: {final}")
            self.verify_final()
            days = self.count_days()
        finally:
            self.stop.set()
            self.stub.stop()
        t = self.tally
        return {
            "seconds": round(time.monotonic() - started, 1),
            "commands": dict(t.commands),
            "serve_kills": t.serve_kills,
            "serve_terms": t.serve_terms,
            "integrity_checks": t.integrity_checks,
            "verifies": t.verifies,
            "days_committed": days,
            "expected_errors": dict(t.expected_errors),
            "busy_errors": dict(t.busy),
            "problems": t.problems,
        }

    def verify_final(self) -> None:
        proc = subprocess.run(
            [sys.executable, "-c", VERIFY_ALL, str(self.db)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            self.tally.problem("final", f"verify: {proc.stderr.strip()[-300:]}")
        for line in proc.stdout.splitlines():
            run_id, _, verdict = line.partition(" ")
            with self.tally.lock:
                self.tally.verifies += 1
            if verdict != "ok":
                self.tally.problem("final", f"record verify {run_id}: {verdict}")

    def count_days(self) -> int:
        script = (
            "import sqlite3, sys\n"
            "conn = sqlite3.connect(sys.argv[1])\n"
            "query = \"SELECT count(*) FROM days WHERE status = 'committed'\"\n"
            "print(conn.execute(query).fetchone()[0])\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, str(self.db)], capture_output=True, text=True
        )
        return (
            int(proc.stdout.strip())
            if proc.returncode == 0 and proc.stdout.strip().isdigit()
            else -1
        )


def render(result: dict[str, Any]) -> str:
    rows = [
        ("seconds", result["seconds"]),
        ("commands run", sum(result["commands"].values())),
        ("serve SIGKILLs / SIGTERMs", f"{result['serve_kills']} / {result['serve_terms']}"),
        ("days committed", result["days_committed"]),
        ("integrity checks", result["integrity_checks"]),
        ("record verifies", result["verifies"]),
        ("expected refusals", sum(result["expected_errors"].values())),
        ("busy errors", sum(result["busy_errors"].values())),
        ("problems", len(result["problems"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"  {p}" for p in result["problems"][:20]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="SQLite file to create (default: a temporary one)")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--workers", type=int, default=2, help="loopsim serve processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loopsim-stress-") as tmp:
        db = args.db or Path(tmp) / "stress.db"
        if db.exists():
            parser.error(f"{db} exists: the harness makes its own database")
        result = Harness(db, args.seconds, args.workers, args.seed, Path(tmp)).run()
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
