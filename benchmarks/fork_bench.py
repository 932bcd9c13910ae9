"""What a fork costs as the prefix grows: `run fork` at the middle day of a seeded run
(the copy, in one write transaction), the file's growth, and `record verify` of the fork
(its own chain plus the parent's prefix, which the proof re-reads) against the parent's.

Seeds one run with about N entries through ``view_bench.seed_record`` (the records the
view, step and backup benchmarks use), then times each operation in this process.

    python benchmarks/fork_bench.py [--sizes 1000,10000,100000] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from view_bench import seeded

from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import RunSpec


def checkpointed_mb(path: Path) -> float:
    """The file's size once its write-ahead log is folded in."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--cache", type=Path, help="keep seeded records here, for reuse")
    args = parser.parse_args()
    print(
        "| entries | fork day | entries copied | fork s | file MB before / after "
        "| verify parent s | verify fork s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            database, run_id, last = seeded(size, Path(tmp), args.cache)
            path = Path(tmp) / "bench.db"
            database.dispose()
            before = checkpointed_mb(path)
            database = dbmod.Database.open(str(path))
            at = last // 2
            started = time.perf_counter()
            with database.write() as session:
                store = Store(session)
                parent = store.get_run(run_id)
                spec = RunSpec.model_validate(parent.spec)
                copy = store.fork_run(parent, at, spec, name="fork", model=parent.model)
                fork_id, copied = copy.run.id, copy.entries
            forked = time.perf_counter() - started
            database.dispose()
            after = checkpointed_mb(path)
            database = dbmod.Database.open(str(path))
            with database.read() as session:
                store = Store(session)
                started = time.perf_counter()
                assert store.verify_chain(run_id).ok
                whole = time.perf_counter() - started
                started = time.perf_counter()
                assert store.verify_chain(fork_id).ok
                proof = store.prove_prefix(store.get_run(fork_id))
                assert proof is not None
                assert proof.ok
                prefix = time.perf_counter() - started
            database.dispose()
            print(
                f"| {size:,} | {at:,} | {copied:,} | {forked:.2f} | {before:.1f} / {after:.1f} "
                f"| {whole:.2f} | {prefix:.2f} |"
            )


if __name__ == "__main__":
    main()
