"""Longest test files first, so the last file to finish is a short one.

The suite runs on one pytest-xdist worker per core with whole files as units (``--dist
loadfile --no-loadscope-reorder``: a file's module fixtures start once). xdist hands the
files out in collection order, topping a worker up when it runs low; by default it
ordered them by their number of tests, so a long file of few tests (the embedded model's,
the stress harness) could start last while the other core ran out of work. Handing out
the longest first (the greedy schedule for parallel machines) leaves the short files for
the end, where they fill in.

How long each file takes is kept in ``tests/durations.json``; ``make durations`` measures
and rewrites it. A run of part of the suite updates only the files it ran, and a file all
of whose tests were skipped keeps its old time. A file not listed counts as the median:
new files are rarely the longest, and a few of them misplaced cost seconds, not minutes.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")


def slowest_first(files: Iterable[str], seconds: Mapping[str, float]) -> list[str]:
    """``files`` (distinct, in collection order) longest first; ties keep their order."""
    files = list(files)
    guess = statistics.median(seconds.values()) if seconds else 0.0
    return sorted(files, key=lambda name: -seconds.get(name, guess))


def file_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def load(path: Path = DURATIONS) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a missing or broken file only costs the order, never the run
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help="write each test file's total time to tests/durations.json at the end",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Runs on every xdist worker alike (they must agree on the order): deterministic.
    rank = {
        name: i for i, name in enumerate(slowest_first(dict.fromkeys(map(file_of, items)), load()))
    }
    items.sort(key=lambda item: rank[file_of(item)])


class Recorder:
    """Adds up setup, call and teardown of every test by file, in the process that
    reports the whole run (the controller, under xdist)."""

    def __init__(self, path: Path = DURATIONS) -> None:
        self.path = path
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.ran: set[str] = set()  # files with a test that ran, not only skipped ones

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid.split("::", 1)[0]
        self.seconds[name] += report.duration
        if report.when == "call":
            self.ran.add(name)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if exitstatus != 0:
            return  # a failed run would teach the order the wrong lengths
        measured = {name: round(self.seconds[name], 1) for name in self.ran}
        if not measured:
            return
        self.path.write_text(
            json.dumps(dict(sorted({**load(self.path), **measured}.items())), indent=1) + "\n",
            encoding="utf-8",
        )


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--record-durations") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(Recorder(), "loopsim-durations")
