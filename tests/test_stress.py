"""The stress tier: many real loopsim processes on one SQLite file for a bounded time
(``python -m loopsim.testing.stress``). LOOPSIM_STRESS_SECONDS sets how long (60 s by default;
`make test-stress` runs it for 10 minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SECONDS = float(os.environ.get("LOOPSIM_STRESS_SECONDS", "60"))


@pytest.mark.stress
def test_many_processes_on_one_sqlite_file_never_damage_it(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopsim.testing.stress",
            "--db",
            str(tmp_path / "stress.db"),
            "--seconds",
            str(SECONDS),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 900,
    )
    assert proc.stdout.strip(), proc.stderr
    result = json.loads(proc.stdout)
    assert result["problems"] == []
    assert proc.returncode == 0, proc.stderr
    # It did what it says: every kind of process ran, and the record grew.
    commands = result["commands"]
    for what in ("run create", "checkin list", "demo", "double-open", "record verify", "serve"):
        assert commands.get(what, 0) > 0, (what, commands)
    assert result["serve_kills"] + result["serve_terms"] > 0
    assert result["integrity_checks"] > 0
    assert result["days_committed"] > 0
