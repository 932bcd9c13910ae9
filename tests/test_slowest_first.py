"""The suite's own schedule: longest test files first (tests/slowest_first.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.slowest_first import DURATIONS, Recorder, load, slowest_first


def test_the_longest_file_is_handed_out_first() -> None:
    seconds = {"a.py": 3.0, "b.py": 90.0, "c.py": 40.0}
    assert slowest_first(["a.py", "b.py", "c.py"], seconds) == ["b.py", "c.py", "a.py"]


def test_a_file_never_measured_counts_as_the_median() -> None:
    seconds = {"a.py": 1.0, "b.py": 10.0, "c.py": 100.0}
    order = slowest_first(["a.py", "new.py", "b.py", "c.py"], seconds)
    # Median 10 s: after the 100 s file, level with b.py (collection order breaks the tie).
    assert order == ["c.py", "new.py", "b.py", "a.py"]


def test_without_measurements_the_collection_order_stands() -> None:
    assert slowest_first(["z.py", "a.py", "m.py"], {}) == ["z.py", "a.py", "m.py"]


def test_a_broken_durations_file_costs_the_order_not_the_run(tmp_path: Path) -> None:
    broken = tmp_path / "durations.json"
    broken.write_text("{not json", encoding="utf-8")
    assert load(broken) == {}
    broken.write_text('["a list"]', encoding="utf-8")
    assert load(broken) == {}
    broken.write_text('{"a.py": 2.5, "b.py": "slow"}', encoding="utf-8")
    assert load(broken) == {"a.py": 2.5}
    assert load(tmp_path / "missing.json") == {}


def test_the_committed_durations_name_test_files_that_exist() -> None:
    # A renamed or deleted file left in the list would weigh on the median for nothing.
    names = json.loads(DURATIONS.read_text(encoding="utf-8"))
    root = DURATIONS.parent.parent
    missing = [name for name in names if not (root / name).is_file()]
    assert missing == [], f"run `make durations`: {missing} no longer exist"
    assert all(seconds >= 0 for seconds in names.values())


def _report(nodeid: str, when: str, seconds: float, outcome: str = "passed") -> pytest.TestReport:
    return pytest.TestReport(nodeid, ("x", 0, "x"), {}, outcome, None, when, duration=seconds)


def test_a_partial_run_updates_only_the_files_it_ran(tmp_path: Path) -> None:
    kept = tmp_path / "durations.json"
    kept.write_text('{"a.py": 50.0, "b.py": 7.0, "c.py": 30.0}', encoding="utf-8")
    recorder = Recorder(kept)
    for when, seconds in (("setup", 1.0), ("call", 2.5), ("teardown", 0.5)):
        recorder.pytest_runtest_logreport(_report("b.py::test_one", when, seconds))
    recorder.pytest_runtest_logreport(_report("b.py::test_two", "call", 1.0))
    # Every test of c.py skipped (no server here): its old time stands.
    recorder.pytest_runtest_logreport(_report("c.py::test", "setup", 0.0, "skipped"))
    recorder.pytest_sessionfinish(None, 0)  # type: ignore[arg-type]
    assert load(kept) == {"a.py": 50.0, "b.py": 5.0, "c.py": 30.0}


def test_a_failed_run_records_nothing(tmp_path: Path) -> None:
    kept = tmp_path / "durations.json"
    recorder = Recorder(kept)
    recorder.pytest_runtest_logreport(_report("a.py::test", "call", 3.0, "failed"))
    recorder.pytest_sessionfinish(None, 1)  # type: ignore[arg-type]
    assert not kept.exists()
