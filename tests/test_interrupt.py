"""Ctrl-C never prints a traceback, at any moment of a real ``loopsim`` process, and ends
it with exit code 130 (what a shell reports for a command Ctrl-C stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

import loopsim.cli.run
from loopsim.testing import scripted_factory

ROOT = Path(__file__).parent.parent
# The console script's wrapper, as pip writes it, and `python -m loopsim`.
ENTRY_POINTS = {
    "console script": ["-c", "import sys; from loopsim.__main__ import main; sys.exit(main())"],
    "python -m": ["-m", "loopsim"],
}
# Before Python has installed its own SIGINT handler, the signal kills the process
# outright: no traceback either, and a shell shows 130 for it too.
KILLED = -signal.SIGINT


def test_the_console_script_is_the_entry_point_that_handles_ctrl_c():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["loopsim"] == "loopsim.__main__:main"


def _start(entry: list[str], tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *extra, *entry, "--db", str(tmp_path / "none.db"), "run", "list"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_ctrl_c_while_the_cli_is_still_importing_exits_130_without_a_traceback(entry, tmp_path):
    # -X importtime reports each import as it finishes: wait for one deep inside the
    # CLI's own imports (an event, not a delay), then press Ctrl-C.
    proc = _start(entry, tmp_path, "-X", "importtime")
    assert proc.stderr is not None
    seen: list[str] = []
    for line in proc.stderr:
        seen.append(line)
        if line.split("|")[-1].strip() == "sqlalchemy":
            proc.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("loopsim never imported sqlalchemy:\n" + "".join(seen[-20:]))
    _, tail = proc.communicate(timeout=60)
    err = "".join(seen) + tail
    assert "Traceback" not in err, err[-2000:]
    assert "KeyboardInterrupt" not in err, err[-2000:]
    assert proc.returncode == 130
    assert "\ninterrupted\n" in err  # (import lines may follow it)


@pytest.mark.parametrize("entry", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_at_any_moment_exits_130_or_lets_the_command_finish(entry, tmp_path, delay):
    proc = _start(entry, tmp_path)
    time.sleep(delay)  # not a window: every outcome below is allowed at every delay
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    if proc.returncode in (130, KILLED):
        assert proc.returncode == KILLED or err.rstrip().endswith("interrupted")
    else:  # it finished first: the missing database is one line, exit 1
        assert proc.returncode == 1, err
        assert err.startswith("error: no database at"), err


def test_ctrl_c_inside_a_command_exits_130_not_clicks_aborted(cli_factory, sqlite_url, tmp_path):
    # Inside a command, Click would turn it into "Aborted!" and exit 1.
    spec = tmp_path / "spec.toml"
    spec.write_text("")
    factory, _ = scripted_factory()

    def interrupted(path: Path) -> None:
        raise KeyboardInterrupt

    original = loopsim.cli.run.load_spec
    loopsim.cli.run.load_spec = interrupted  # type: ignore[assignment]
    try:
        result = cli_factory(sqlite_url, factory)("run", "create", str(spec))
    finally:
        loopsim.cli.run.load_spec = original
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted"
    assert "Aborted" not in result.output


def test_ctrl_c_while_the_arguments_are_parsed_says_interrupted(
    cli_factory, sqlite_url, monkeypatch
):
    # Found on a loaded machine: a Ctrl-C just after the imports, while Click parsed the
    # arguments, reached Typer, which exits 130 without a word.
    from typer.core import TyperGroup

    def interrupted(self, ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(TyperGroup, "parse_args", interrupted)
    result = cli_factory(sqlite_url)("run", "list")
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted"


def test_ctrl_c_while_a_real_command_waits_exits_130(tmp_path, sqlite_url):
    # `run create` on a FIFO nobody writes to blocks in open(): Ctrl-C reaches the
    # command itself, past every import.
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopsim", "--db", sqlite_url, "run", "create", str(fifo)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    opened = threading.Event()

    def wait_for_the_reader() -> None:
        # Opening the write end returns once the command has opened the read end.
        fd = os.open(fifo, os.O_WRONLY)
        opened.set()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        time.sleep(60)  # keep the write end open: the reader must not see EOF
        os.close(fd)

    threading.Thread(target=wait_for_the_reader, daemon=True).start()
    _, err = proc.communicate(timeout=120)
    assert opened.is_set()
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert proc.returncode == 130
    assert err.strip() == "interrupted"


def test_the_entry_point_imports_nothing_before_it_can_catch_ctrl_c():
    # Between the console script's `from loopsim.__main__ import main` and main()'s `try`,
    # a Ctrl-C is a KeyboardInterrupt traceback: that import must load loopsim's three
    # small modules and nothing that takes time (built-in modules are already in the binary).
    # -S: the same start, whatever the install's import hooks have loaded already.
    probe = (
        "import sys; before = set(sys.modules); import loopsim.__main__; "
        "print(' '.join(sorted(set(sys.modules) - before - set(sys.builtin_module_names))))"
    )
    out = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.split()
    # __future__ is a few lines every module's `from __future__ import annotations` loads.
    assert set(out) <= {"__future__", "loopsim", "loopsim.__main__", "loopsim.interrupts"}, out


def test_a_ctrl_c_python_cannot_raise_where_it_lands_still_stops_the_command():
    """On a loaded machine a Ctrl-C landed in a weakref callback of the import machinery,
    where Python prints "Exception ignored" with a traceback and drops it: the command
    went on. The entry point's unraisable hook sends it again, to land in ordinary code:
    in the main thread, so that a command blocked in a system call (here a sleep far
    longer than the deadline; a model's reply, in a real command) is interrupted too."""
    script = """
import sys, time, weakref
import loopsim.__main__ as entry
sys.unraisablehook = entry._unraisable
class Held:
    pass
def callback(_ref):
    raise KeyboardInterrupt
held = Held()
ref = weakref.ref(held, callback)
try:
    del held  # the callback runs here, where its exception cannot propagate
    time.sleep(3600)
    print("went on")
except KeyboardInterrupt:
    print("interrupted")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "interrupted"
    assert "Traceback" not in done.stderr, done.stderr


def test_a_ctrl_c_swallowed_while_python_shuts_down_is_dropped_quietly():
    """No thread can start once the interpreter is finalizing, and nothing can be
    imported: the hook must neither fail with a traceback of its own nor hang."""
    script = """
import sys
import loopsim.__main__ as entry
sys.unraisablehook = entry._unraisable
class Held:
    def __del__(self):
        raise KeyboardInterrupt
held = Held()  # collected while the interpreter shuts down
print("done")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "done"
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr


def test_the_entry_point_installs_the_hook_for_ctrl_c_in_callbacks():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, loopsim.__main__ as m; m.main(); "
            "print(sys.unraisablehook is m._unraisable)",
            "--version",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.splitlines()[-1] == "True", done.stderr


def test_a_second_ctrl_c_inside_a_callback_from_c_lands_once_it_returns():
    """ctypes swallows an exception raised in a callback, and the embedded model's grammar
    sampler then skipped its work for a token: llama.cpp aborted the process (SIGABRT). A
    second Ctrl-C inside a registered callback is sent again, and lands after it."""
    import io

    from rich.console import Console

    from loopsim.cli.stepping import stop_on_interrupt
    from loopsim.interrupts import NATIVE_CALLBACKS

    def callback() -> str:
        signal.raise_signal(signal.SIGINT)  # its handler runs in here
        return "finished"

    NATIVE_CALLBACKS.add(callback.__code__)
    returned: list[str] = []

    def two_presses() -> None:
        with stop_on_interrupt(Console(file=io.StringIO())) as stop:
            signal.raise_signal(signal.SIGINT)  # the first: stop after this day
            assert stop.is_set()
            returned.append(callback())  # the second, inside the callback: not raised there
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # sent again, it lands here
                time.sleep(0.01)

    try:
        with pytest.raises(KeyboardInterrupt):
            two_presses()
    finally:
        NATIVE_CALLBACKS.discard(callback.__code__)
    assert returned == ["finished"]


def test_the_first_ctrl_c_is_said_while_stderr_is_muted(capfd):
    """llama-cpp-python mutes stderr (the file and its descriptor) while it loads the
    embedded model: a first Ctrl-C then went unsaid, and a user pressed again."""
    import io

    from rich.console import Console

    from loopsim.cli.stepping import stop_on_interrupt

    with stop_on_interrupt(Console(file=io.StringIO())) as stop:
        saved, muted = os.dup(2), open(os.devnull, "w")  # noqa: SIM115
        real, sys.stderr = sys.stderr, muted
        os.dup2(muted.fileno(), 2)
        try:
            signal.raise_signal(signal.SIGINT)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sys.stderr = real
            muted.close()
        assert stop.is_set()
    assert "stopping after this day; Ctrl-C again abandons it" in capfd.readouterr().err


def _pressing_once(when):
    """A scripted reply that presses Ctrl-C (once) inside the model call ``when`` picks."""
    from loopsim.testing import default_reply

    pressed: list[bool] = []

    def reply(messages):
        if not pressed and when(messages):
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)
        return default_reply(messages)

    return reply


def test_a_first_ctrl_c_that_cuts_the_days_short_exits_130_and_says_so(
    cli_factory, sqlite_url, tmp_path
):
    """A first Ctrl-C finished the day in flight and stopped, as promised, but exited 0:
    a script took two days for the five it asked for."""
    from tests.conftest import write_spec
    from tests.test_cli_checkin import SPEC

    calls: list[int] = []

    def second_day(messages) -> bool:
        calls.append(1)
        return len(calls) == 2

    spec = SPEC.replace("every_days = 2", "every_days = 50")
    factory, _ = scripted_factory([_pressing_once(second_day)])
    cli = cli_factory(sqlite_url, factory)
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", spec))).stdout.strip()
    result = cli("run", "step", run_id, "--days", "5")
    assert result.exit_code == 130, result.output
    lines = result.stderr.splitlines()
    assert "stopping after this day; Ctrl-C again abandons it (nothing half-written)" in lines
    assert [line.split()[:2] for line in lines if line.startswith("day ")] == [
        ["day", "1"],
        ["day", "2"],
    ]  # the day in flight finished, and no other began
    assert lines[-1] == f"stopped by Ctrl-C after 2 of 5 days; `loopsim run step {run_id}` goes on"
    again = cli("run", "step", run_id, "--days", "1")
    assert again.exit_code == 0, again.output
    assert "day 3 " in again.stderr


def test_a_first_ctrl_c_during_a_check_ins_predictions_says_what_it_does(
    cli_factory, sqlite_url, tmp_path
):
    """The first Ctrl-C during predictions said "stopping after this day" when no day was
    in flight; the predictions go on (their check-in then opens) unless pressed again."""
    from tests.conftest import write_spec
    from tests.test_cli_checkin import SPEC

    factory, _ = scripted_factory([_pressing_once(lambda m: "Question:" in m[-1].text)])
    cli = cli_factory(sqlite_url, factory)
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", SPEC))).stdout.strip()
    result = cli("run", "step", run_id, "--days", "5")
    assert result.exit_code == 3, result.output  # the check-in after day 2 opened
    lines = result.stderr.splitlines()
    assert (
        "stopping once the check-in's predictions are in; Ctrl-C again abandons them "
        "(the days stay committed)"
    ) in lines
    assert "stopping after this day" not in result.stderr
    assert any(line.startswith("check-in 1 is open") for line in lines)


def test_a_first_ctrl_c_stops_the_demo_which_still_reports_its_days(
    cli_factory, sqlite_url, tmp_path
):
    """The demo looped into more days after a first Ctrl-C (step_days returned early, and
    the demo stepped again for the days it still wanted)."""
    calls: list[int] = []

    def first_day(messages) -> bool:
        calls.append(1)
        return len(calls) == 1

    factory, _ = scripted_factory([_pressing_once(first_day)])
    report = tmp_path / "report.md"
    result = cli_factory(sqlite_url, factory)("demo", "--days", "4", "--report", str(report))
    assert result.exit_code == 130, result.output
    lines = result.stderr.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("day ")] == [["day", "1"]]
    assert lines[-1] == "stopped by Ctrl-C after 1 day of 4"
    assert "record verified: " in result.stderr
    written = report.read_text()
    assert "## Day 1: " in written
    assert "## Day 2" not in written
