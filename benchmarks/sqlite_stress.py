"""Many real loopsim processes on one SQLite file; prints what they did and any damage.

    python benchmarks/sqlite_stress.py --seconds 600

The harness itself is `loopsim.testing.stress` (also `python -m
loopsim.testing.stress`), so that a user can run it on the disk they mean to
keep records on; figures are in README.md here.
"""

from __future__ import annotations

from loopsim.testing.stress import main

if __name__ == "__main__":
    raise SystemExit(main())
