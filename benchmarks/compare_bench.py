"""What `run compare` costs as two forks grow apart: a run seeded with about N entries
(the view benchmark's records), forked at day 1, and the fork given as many days of its
own (other words, so every day's divergence is computed), then ``compare`` timed with the
word-count cosine (LOOPSIM_EMBEDDINGS=lexical), in this process.

    python benchmarks/compare_bench.py [--sizes 1000,10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from view_bench import PER_DAY, body, seeded

from loopsim.checkin.drift import lexical_similarity
from loopsim.exports.compare import compare
from loopsim.record.store import EntryInput, Store
from loopsim.schemas import EntryKind, RunSpec
from loopsim.testing import add_day


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    args = parser.parse_args()
    print("| entries per run | days compared | compare s | mean divergence |")
    print("|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            database, run_id, last = seeded(size, Path(tmp))
            with database.write() as session:
                store = Store(session)
                parent = store.get_run(run_id)
                spec = RunSpec.model_validate(parent.spec)
                fork_id = store.fork_run(parent, 1, spec, name="fork", model=parent.model).run.id
            index = 1
            while index < last:
                with database.write() as session:
                    store = Store(session)
                    for _ in range(min(200, last - index)):
                        index += 1
                        items = [
                            EntryInput(EntryKind.NOTE, f"Day {index} item {k}", body(-index - k))
                            for k in range(PER_DAY)
                        ]
                        add_day(store, fork_id, index, items)
            started = time.perf_counter()
            with database.read() as session:
                store = Store(session)
                result = compare(
                    store, store.get_run(run_id), store.get_run(fork_id), lexical_similarity
                )
            seconds = time.perf_counter() - started
            database.dispose()
            print(
                f"| {size:,} | {len(result.divergence):,} | {seconds:.2f} "
                f"| {result.mean_divergence:.3f} |"
            )


if __name__ == "__main__":
    main()
