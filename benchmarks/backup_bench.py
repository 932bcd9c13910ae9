"""What keeping a record safe costs: `db check` (quick and full) and `db backup` as the
record grows, with the file's size.

Seeds one run with about N entries through ``view_bench.seed_record`` (the same records
the view and step benchmarks use), then times each operation in this process.

    python benchmarks/backup_bench.py [--sizes 1000,10000,100000] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from view_bench import seeded

from loopsim.record import maintenance


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--cache", type=Path, help="keep seeded records here, for reuse")
    args = parser.parse_args()
    print("| entries | file MB | check --quick s | check s | backup s |")
    print("|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            database, _, _ = seeded(size, Path(tmp), args.cache)
            database.dispose()
            path = Path(tmp) / "bench.db"
            url = str(path)
            megabytes = path.stat().st_size / 1e6
            quick = timed(lambda: maintenance.check(url, quick=True))  # noqa: B023
            full = timed(lambda: maintenance.check(url))  # noqa: B023
            target = Path(tmp) / "copy.db"
            copy = timed(lambda: maintenance.backup(url, target))  # noqa: B023
            print(f"| {size:,} | {megabytes:.1f} | {quick:.2f} | {full:.2f} | {copy:.2f} |")


if __name__ == "__main__":
    main()
