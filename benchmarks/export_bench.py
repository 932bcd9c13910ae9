"""What reading a long record costs: wall time, CPU seconds and peak memory of the
commands that read a whole run (`export` in each format, `record show`) on records of
10^3 to 10^5 entries.

Each command runs as a fresh process, ``--rounds`` times, interleaved; the table gives
the median wall and CPU seconds and the largest peak resident set (``ru_maxrss`` of that
process alone, from ``os.wait4``). ``record show | head -1`` reads one line and closes
the pipe: the time until a person sees the record begin.

The records are seeded straight through the store, as ``service_bench.py`` seeds its
own, and kept under ``--cache``: five entries a day (a note and four answers to it), and
two calls a day (a report rejected and fed back, then accepted), each with a prompt of
about 3 KB, every day approved by one check-in, so the dataset has an example a day.

``--against CHECKOUT`` runs the same commands from another checkout of loopsim (an
earlier commit, say) beside this one's, interleaved, so a change is measured in one run.

    python benchmarks/export_bench.py [--sizes 1000,10000,100000] [--rounds 3]
        [--cache DIR] [--against CHECKOUT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "examples" / "bee-foraging.toml"
# This process imports no loopsim: a child's peak RSS counts the pages of the process it
# was forked from, so the parent stays small and seeds its records in a child of its own.


def seed(path: Path, entries: int) -> None:
    """A record of ``entries`` entries, five a day, in a fresh SQLite file."""
    import tomllib

    sys.path.insert(0, str(ROOT))
    from loopsim.record import db as dbmod
    from loopsim.record.store import EntryInput, Store
    from loopsim.record.tables import CheckIn, utcnow
    from loopsim.researcher.conversation import Logged
    from loopsim.schemas import parse_spec
    from loopsim.testing import add_day

    prompt = [
        {"role": "system", "content": "You are a field ecologist. " * 20},
        {"role": "user", "content": "The log so far, then today's question. " * 60},
    ]

    dbmod.upgrade(str(path))
    database = dbmod.Database.open(str(path))
    with database.write() as session:
        store = Store(session)
        spec = parse_spec(tomllib.loads(SPEC.read_text()))
        run_id = store.create_run(spec, name="export-bench", model="scripted:instant").id
        for index in range(1, entries // 5 + 1):
            items = [EntryInput("note", f"Note {index}", f"Forager count {index} at patch.")]
            items += [
                EntryInput("answer", f"Answer {index}.{k}", f"Dance {k} on day {index}.", parent=0)
                for k in range(1, 5)
            ]
            day = add_day(store, run_id, index, items)
            calls = [
                Logged(
                    1,
                    "day",
                    0,
                    attempt,
                    prompt,
                    f"Reply {index}.{attempt}",
                    attempt == 2,
                    None if attempt == 2 else "not JSON",
                    "seed",
                    900,
                    120,
                    50,
                )
                for attempt in (1, 2)
            ]
            store.add_calls(day, calls, [])
        now = utcnow()
        last = entries // 5
        approved = CheckIn(
            run_id=run_id,
            reason="scheduled",
            first_day_index=1,
            last_day_index=last,
            decision="approve",
            opened_at=now,
            decided_at=now,
        )
        session.add(approved)
    database.dispose()


def record(cache: Path, entries: int) -> tuple[Path, str]:
    path = cache / f"export-{entries}.db"
    if not path.exists():
        began = time.perf_counter()
        partial = path.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        command = [sys.executable, __file__, "--seed-into", str(partial), str(entries)]
        subprocess.run(command, check=True)
        partial.rename(path)
        print(f"seeded {entries} entries in {time.perf_counter() - began:.0f} s", file=sys.stderr)
    with sqlite3.connect(path) as conn:
        (run_id,) = conn.execute("SELECT id FROM runs").fetchone()
    return path, run_id


def measure(
    argv: list[str], env: dict[str, str], cwd: Path, head: bool
) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak RSS (KB) of one run of ``argv``."""
    began = time.perf_counter()
    if head:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.readline()  # the first line is blank: a day's heading follows it
        proc.stdout.close()
    else:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - began
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0 and not head:
        assert proc.stderr is not None
        sys.exit(f"{' '.join(argv)} failed ({code}): {proc.stderr.read().decode().strip()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


def main() -> None:
    if sys.argv[1:2] == ["--seed-into"]:
        seed(Path(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, help="keep the seeded records here")
    parser.add_argument("--against", type=Path, help="another loopsim checkout, run beside")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = args.cache or work / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        codes = [("this", ROOT)] + ([("--against", args.against.resolve())] if args.against else [])
        rows: dict[tuple[int, str, str], list[tuple[float, float, int]]] = {}
        for entries in sizes:
            source, run_id = record(cache, entries)
            url = work / "record.db"
            shutil.copyfile(source, url)  # a copy: a reader never changes it, but be sure
            commands = [
                (f"export -f {fmt}", ["export", run_id, "-f", fmt, "-o", str(work / "out")], False)
                for fmt in ("md", "jsonl", "html", "dataset")
            ] + [
                (
                    "export -f jsonl --calls",
                    ["export", run_id, "-f", "jsonl", "--calls", "-o", str(work / "out")],
                    False,
                ),
                ("record show", ["record", "show", run_id], False),
                ("record show \\| head -2", ["record", "show", run_id], True),
            ]
            for _ in range(args.rounds):
                for name, argv, head in commands:
                    for code, where in codes:
                        env = {
                            **os.environ,
                            "PYTHONPATH": str(where),
                            "LOOPSIM_DATABASE_URL": str(url),
                        }
                        argv_full = [sys.executable, "-m", "loopsim", *argv]
                        found = measure(argv_full, env, where, head)
                        rows.setdefault((entries, name, code), []).append(found)
    print(f"Medians of {args.rounds} rounds; peak RSS is the largest of them.\n")
    print("| entries | command | code | wall s | CPU s | peak RSS MB |")
    print("|---:|---|---|---:|---:|---:|")
    for (entries, name, code), found in rows.items():
        wall = statistics.median(f[0] for f in found)
        cpu = statistics.median(f[1] for f in found)
        rss = max(f[2] for f in found) / 1024
        print(f"| {entries:,} | `{name}` | {code} | {wall:.2f} | {cpu:.2f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
