"""Start-up: a command imports the heavy seams (langchain, the chat providers, Alembic,
llama.cpp, jinja2, prometheus, httpx) only if it uses them, so that reading the record
starts in a blink.

Each check runs a fresh interpreter and looks at what it imported; none times anything
(the machines are shared and noisy: benchmarks/startup_bench.py measures the CPU).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loopsim import __version__
from loopsim.record import db as dbmod
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
NOT_FOR_READING = ("sqlalchemy.dialects.postgresql", "loopsim.checkin", "rich.progress")
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
