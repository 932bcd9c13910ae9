"""SIGKILL at random moments: no partial day, a verifying chain, no gap, no duplicate.

The worker is a real separate process stepping a real SQLite file; only the model is
scripted (and slowed a little, so kills land in every phase of a day).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.schemas import DayStatus
from tests.conftest import make_run

WORKER = textwrap.dedent(
    """
    import sys, time
    from loopsim import Database, Loop, Settings
    from loopsim.testing import default_reply, scripted_factory

    def slow(messages):
        time.sleep(0.02)
        return default_reply(messages)

    database = Database.open(sys.argv[1])
    factory, _ = scripted_factory([slow])
    print("ready", flush=True)
    Loop(database, Settings(), factory).run_days(sys.argv[2], 100000)
    """
)

TRIALS = int(os.environ.get("LOOPSIM_CRASH_TRIALS", "20"))


def check(database: Database, run_id: str) -> int:
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        assert [d.index for d in days] == list(range(1, len(days) + 1)), "gap or duplicate"
        assert all(d.status == DayStatus.COMMITTED for d in days)
        entries = store.list_entries(run_id)
        per_day: dict[int | None, int] = {}
        for _entry, index, _status in entries:
            per_day[index] = per_day.get(index, 0) + 1
        assert all(per_day.get(d.index) == 2 for d in days), "a day without all its entries"
        result = store.verify_chain(run_id)
        assert result.ok, result.broken
        assert result.checked == 2 * len(days)
        return len(days)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(sqlite_url, spec):
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"days": 100000})})
    database = Database.open(sqlite_url)
    run_id = make_run(database, spec)
    rng = random.Random(1234)
    counts = []
    for _ in range(TRIALS):
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, sqlite_url, run_id], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        counts.append(check(database, run_id))
    assert counts == sorted(counts)
    # The runs made progress between kills (how much depends on the machine's load).
    assert counts[-1] > 0
    assert len(set(counts)) > 1
    database.dispose()
