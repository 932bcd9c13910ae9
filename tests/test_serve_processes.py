"""`loopsim serve --processes N` as real processes: a parent that starts N workers on one
database, passes SIGTERM/SIGINT on once, and restarts a worker that dies. The model is the
OpenAI-compatible stub on 127.0.0.1; every wait is for an event, with a generous deadline."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from loopsim.service.logs import configure_logging
from loopsim.service.processes import ChildrenKeepDying, ProcessPolicy, Supervisor
from loopsim.testing.stubserver import StubOpenAI
from tests.test_serve_process import assert_whole, create_runs, snapshot, wait_for

DEADLINE = 120


class Parent:
    """`loopsim serve --processes N` in a session of its own, logging JSON to a file that
    its children write to as well."""

    def __init__(self, url: str, stub: StubOpenAI, log: Path, *args: str) -> None:
        env = {
            **os.environ,
            "LOOPSIM_DATABASE_URL": url,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            "LOOPSIM_RETRY_INITIAL_SECONDS": "0.05",
            "LOOPSIM_MODEL_TIMEOUT": "5",
        }
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loopsim", "serve", "--log-format", "json", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,
        )

    def events(self, event: str | None = None) -> list[dict]:
        if self.proc.poll() not in (None, 0):
            raise AssertionError(f"the parent exited {self.proc.returncode}:\n{self.text()}")
        lines = [json.loads(ln) for ln in self.text().splitlines() if ln.startswith("{")]
        return [e for e in lines if event is None or e.get("event") == event]

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def child_pids(self, worker: str) -> list[int]:
        return [int(e["msg"].split("pid ")[1].rstrip(")")) for e in self.started(worker)]

    def started(self, worker: str) -> list[dict]:
        return [e for e in self.events("serve.child.start") if e.get("worker") == worker]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def workers_of_days(url: str) -> set[str]:
    return {d.worker for run in snapshot(url)[0].values() for d in run if d.worker}


@pytest.fixture
def stub():
    with StubOpenAI(latency=0.1) as server:
        yield server


def test_two_processes_share_the_runs_and_sigterm_stops_both_cleanly(any_url, stub, tmp_path):
    create_runs(any_url, 4, days=10_000)
    common = ("--http", "off", "--poll-seconds", "0.1", "--grace-seconds", "2")
    parent = Parent(
        any_url,
        stub,
        tmp_path / "p.log",
        "--processes",
        "2",
        "-c",
        "2",
        "--worker-id",
        "px",
        *common,
    )
    try:
        wait_for(
            lambda: workers_of_days(any_url) >= {"px-1", "px-2"},
            DEADLINE,
            "committed days from both worker processes",
        )
        pids = parent.child_pids("px-1") + parent.child_pids("px-2")
        assert parent.stop(signal.SIGTERM) == 0, parent.text()
    finally:
        parent.kill()
    assert len(pids) == 2
    assert not any(alive(p) for p in pids)
    days, runs = snapshot(any_url)
    assert_whole(days)
    assert all(r.lease_owner is None for r in runs.values()), "a lease is still held"
    stopped = {e.get("worker") for e in parent.events("serve.start")}
    assert stopped == {"px-1", "px-2"}
    assert len(parent.events("serve.stop")) == 3  # each child, then the parent
    # One signal to the parent is one to each child: days in flight got their grace.
    assert "second stop request" not in parent.text()


def test_a_worker_killed_is_restarted_and_ctrl_c_reaches_each_once(sqlite_url, stub, tmp_path):
    create_runs(sqlite_url, 4, days=10_000)
    parent = Parent(
        sqlite_url,
        stub,
        tmp_path / "p.log",
        *("--processes", "2", "-c", "2", "--worker-id", "k", "--http", "127.0.0.1:0"),
        *("--poll-seconds", "0.1", "--grace-seconds", "2", "--lease-seconds", "60"),
    )
    try:
        wait_for(lambda: workers_of_days(sqlite_url) >= {"k-1"}, DEADLINE, "a day from k-1")
        (first,) = parent.child_pids("k-1")
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(parent.started("k-1")) == 2, DEADLINE, "k-1 started again")
        exits = [e for e in parent.events("serve.child.exit") if e.get("worker") == "k-1"]
        assert exits
        assert exits[0]["error"] == -signal.SIGKILL
        assert exits[0]["msg"].startswith("worker k-1 was killed by SIGKILL after ")
        # The new k-1 is a whole worker: it serves again, under the same id.
        wait_for(
            lambda: sum(e.get("worker") == "k-1" for e in parent.events("serve.start")) == 2,
            DEADLINE,
            "the restarted k-1 serving",
        )
        before = snapshot(sqlite_url)[0]
        done = sum(1 for run in before.values() for d in run if d.worker == "k-1")
        wait_for(
            lambda: (
                sum(1 for r in snapshot(sqlite_url)[0].values() for d in r if d.worker == "k-1")
                > done
            ),
            DEADLINE,
            "a day from the restarted k-1",
        )
        # Ctrl-C in a terminal: SIGINT to the parent's whole process group.
        os.killpg(parent.proc.pid, signal.SIGINT)
        assert parent.proc.wait(timeout=DEADLINE) == 0, parent.text()
    finally:
        parent.kill()
    assert "second stop request" not in parent.text()
    assert len(parent.events("http.listening")) == 3  # each start of a child has its own
    days, runs = snapshot(sqlite_url)
    assert_whole(days)
    assert all(r.lease_owner is None for r in runs.values())


def test_a_worker_that_keeps_dying_makes_the_parent_give_up(tmp_path):
    policy = ProcessPolicy(restart_initial_seconds=0.05, max_restarts=2, poll_seconds=0.05)
    marker = tmp_path / "starts"
    dying = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(3)"]
    steady = [sys.executable, "-c", "import time; time.sleep(600)"]
    supervisor = Supervisor([("d", dying), ("s", steady)], policy)
    with pytest.raises(
        ChildrenKeepDying,
        match=r"worker d died 3 times in a row \(the last time it exited with code 3\)",
    ):
        supervisor.run()
    assert marker.read_text() == "xxx"  # started, then restarted twice, then given up
    healthy = supervisor.slots[1]
    assert healthy.proc is not None
    assert healthy.proc.returncode == -signal.SIGTERM


def test_bad_input_is_one_line_before_any_worker_starts(tmp_path):
    env = {**os.environ, "LOOPSIM_DATABASE_URL": str(tmp_path / "missing.db")}
    done = subprocess.run(
        [sys.executable, "-m", "loopsim", "serve", "--processes", "2", "--http", "off"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode != 0
    assert done.stderr.strip().startswith("error:")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "serve.child.start" not in done.stderr
    assert "started (pid" not in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "loopsim", "serve", "--processes", "3", "--http", ":65534"],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2
    assert "no room for 3 workers" in done.stderr


def test_a_stop_signal_while_workers_start_starts_no_more():
    """The parent went on starting workers through SIGTERMs (with -p 100000, about
    1,900 were alive before a SIGKILL); a signal while they start now ends the starting."""
    # Not 600 s: a worker started after the signal is never told to stop, and is waited for.
    steady = [sys.executable, "-c", "import time; time.sleep(60)"]

    class Signalled(Supervisor):
        def _start(self, slot):
            super()._start(slot)
            if slot.index == 2:  # a real SIGTERM to this process, while starting the rest
                os.kill(os.getpid(), signal.SIGTERM)

    supervisor = Signalled([(f"w{i}", steady) for i in range(1, 7)], ProcessPolicy())
    assert supervisor.run() == 0
    started = [slot for slot in supervisor.slots if slot.proc is not None]
    assert [slot.name for slot in started] == ["w1", "w2"]
    assert all(slot.proc.returncode == -signal.SIGTERM for slot in started)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--processes", "100000"], "--processes 100000: at most 8 a core"),
        (["--lease-seconds", "inf"], "--lease-seconds: give 86400 or less"),
        (["--grace-seconds", "1e300"], "--grace-seconds: give 86400 or less"),
    ],
)
def test_serve_refuses_what_no_machine_could_take(tmp_path, flags, says):
    """--processes 100000 started workers until the machine ran out; --lease-seconds inf
    was a traceback (OverflowError)."""
    env = {**os.environ, "LOOPSIM_DATABASE_URL": str(tmp_path / "x.db")}
    done = subprocess.run(
        [sys.executable, "-m", "loopsim", "serve", "--http", "off", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert says in line
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(
    ("worker", "says"), [("px-2", " INFO [px-2] claimed r1"), (None, " INFO claimed r1")]
)
def test_text_log_lines_name_their_worker_under_processes(worker, says):
    """Under ``--processes`` the workers' text lines interleave on one stderr; each
    worker's lines say which worker wrote them, and the supervising parent's do not."""
    logger = logging.getLogger("loopsim")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    stream = io.StringIO()
    try:
        configure_logging("text", "info", worker=worker)
        logger.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("loopsim.service.worker").info("claimed %s", "r1")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(says), line
