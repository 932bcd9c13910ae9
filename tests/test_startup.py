"""Start-up: a command imports the heavy seams (langchain, the chat providers, Alembic,
llama.cpp, jinja2, prometheus, httpx) only if it uses them, so that reading the record
starts in a blink.

Each check runs a fresh interpreter and looks at what it imported; none times anything
(the machines are shared and noisy: benchmarks/startup_bench.py measures the CPU).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from loopsim import __version__
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import RunStatus
from loopsim.testing.stubserver import StubOpenAI
from tests.conftest import make_run

HEAVY = frozenset(
    {
        "alembic",
        "httpx",
        "jinja2",
        "langchain",
        "langchain_core",
        "langchain_openai",
        "llama_cpp",
        "openai",
        "prometheus_client",
    }
)
# Lighter than HEAVY, but no command that reads a SQLite record needs them either:
# SQLAlchemy's PostgreSQL dialect and its drivers' modules (a postgresql_where once loaded
# them all), the check-in logic (scoring, decisions, the schedule's date parsing), and
# rich's progress bars (drawn only by commands that step days or check the database).
# Nor the command modules of other commands: the root imports a command's module when the
# command is looked up (loopsim/cli/__init__.py).
NOT_FOR_READING = (
    "sqlalchemy.dialects.postgresql",
    "loopsim.checkin",
    "rich.progress",
    "loopsim.cli.calls",
    "loopsim.cli.db",
    "loopsim.cli.demo",
    "loopsim.cli.export",
    "loopsim.cli.probe",
    "loopsim.cli.serve",
)
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}


def heavy_in_sys_modules(statement: str) -> list[str]:
    """The heavy packages a fresh interpreter holds after running ``statement``."""
    probe = (
        f"{statement}; import json, sys; print(json.dumps(sorted("
        f"{{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout))


def imported(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime ARGV`` and name every module it imported at any time,
    from the interpreter's own report of every import on stderr."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *argv], env=ENV, capture_output=True, text=True
    )
    found = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            found.add(line.rsplit("|", 1)[1].strip())
    return done, found


def heavy_imported(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``python -X importtime ARGV`` and name the heavy packages it imported."""
    done, found = imported(argv)
    return done, sorted({name.split(".")[0] for name in found} & HEAVY)


def test_importing_the_cli_imports_no_heavy_seam():
    assert heavy_in_sys_modules("import loopsim.cli") == []


def test_the_probes_see_a_heavy_import():
    """The checks here would pass on a probe that sees nothing: this one proves they can
    fail, on the module that renders the HTML report with jinja2."""
    assert "jinja2" in heavy_in_sys_modules("import loopsim.exports.report")
    _, found = heavy_imported(["-c", "import loopsim.exports.report"])
    assert "jinja2" in found


@pytest.mark.parametrize(
    ("command", "says"),
    [
        pytest.param(command, says, id=" ".join(command))
        for command, says in (
            (["--version"], f"loopsim {__version__}"),
            (["run", "list"], "RUN"),
            (["run", "show", "RUN"], "RUN"),
            (["record", "show", "RUN"], "no entries yet"),
            (["checkin", "list"], "no check-ins"),
        )
    ],
)
def test_reading_the_record_imports_no_heavy_seam(command, says, sqlite_url, spec):
    database = dbmod.Database.open(sqlite_url)
    try:
        run_id = make_run(database, spec)
    finally:
        database.dispose()
    argv = [arg.replace("RUN", run_id) for arg in command]
    done, found = imported(["-m", "loopsim", "--db", sqlite_url, *argv])
    assert done.returncode == 0, done.stderr[-2000:]
    assert says.replace("RUN", run_id) in done.stdout + done.stderr
    assert sorted({name.split(".")[0] for name in found} & HEAVY) == []
    if command != ["--version"]:
        # The probe sees submodules: the dialect the command does use is among them.
        assert "sqlalchemy.dialects.sqlite" in found
    assert sorted(name for name in found if name.startswith(NOT_FOR_READING)) == []


def test_a_postgresql_engine_still_gets_the_partial_index_on_days():
    """The option the SQLite path no longer loads at import is there for PostgreSQL."""
    probe = (
        "from sqlalchemy.schema import CreateIndex; "
        "from loopsim.record import db; from loopsim.record.tables import Day; "
        "engine = db.make_engine(db.normalize_url('postgresql+psycopg://u@127.0.0.1/x')); "
        "(index,) = [i for i in Day.__table__.indexes if i.name.startswith('uq_days')]; "
        "print(CreateIndex(index).compile(dialect=engine.dialect))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().endswith("WHERE status != 'failed'")


def test_version_is_answered_without_the_cli_and_says_what_the_cli_says():
    from typer.testing import CliRunner

    from loopsim.cli import app

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "loopsim", "--version"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    assert "typer" not in done.stderr
    assert "sqlalchemy" not in done.stderr
    in_process = CliRunner().invoke(app, ["--version"])
    assert in_process.exit_code == 0
    assert done.stdout == in_process.output == f"loopsim {__version__}\n"


def _lines(stream: Any) -> queue.Queue[str | None]:
    """The lines of ``stream`` as they come, read on a thread; None at its end."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _import_name(line: str) -> str | None:
    if line.startswith("import time:") and line.count("|") == 2:
        return line.rsplit("|", 1)[1].strip()
    return None


def test_serve_claims_its_first_run_before_importing_langchain(sqlite_url, spec, tmp_path):
    """`serve` imports the chat seam (langchain) when it plans its first day, not before
    its first claim. The same probe then sees langchain-core come in as the day is
    planned: it is not blind to the import it checks for."""
    database = dbmod.Database.open(sqlite_url)
    try:
        run_id = make_run(database, spec, model="openai:stub-model")
        with database.write() as session:
            store = Store(session)
            store.set_status(store.get_run(run_id), RunStatus.RUNNING)  # as `run start`
    finally:
        database.dispose()
    # The stub answers after a minute: the day is in flight when the test stops serve.
    with StubOpenAI(latency=60) as stub:
        env = {
            **ENV,
            "LOOPSIM_DATABASE_URL": sqlite_url,
            "LOOPSIM_MODEL_BASE_URL": stub.base_url,
            "LOOPSIM_EMBEDDINGS": "",  # the default, which builds the offline embedder
        }
        argv = [sys.executable, "-X", "importtime", "-m", "loopsim", "serve", "--http", "off"]
        argv += ["--log-format", "json", "--grace-seconds", "0", "--poll-seconds", "0.1"]
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stderr is not None
        lines = _lines(proc.stderr)
        before: set[str] = set()  # imported before the claim
        after: set[str] = set()  # imported from the claim on
        claimed = False
        deadline = time.monotonic() + 120
        try:
            while "langchain_core" not in after and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if line is None:
                    break
                if line.startswith("{") and json.loads(line).get("event") == "lease.claimed":
                    claimed = True
                name = _import_name(line)
                if name is not None:
                    (after if claimed else before).add(name.split(".")[0])
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert claimed, "serve never claimed the queued run"
    assert sorted(before & (HEAVY | {"langsmith"})) == ["prometheus_client"]
    assert "langchain_core" in after
