"""`checkin review` driven in a real terminal (tmux), as a person would drive it: the
prediction is never on screen before the answer is stored."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

from loopsim.config import Settings
from loopsim.db import Database
from loopsim.loop import Loop
from loopsim.testing import scripted_factory
from tests.conftest import make_run
from tests.test_checkin import BEES, persona_switching_model, spec_with

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def wait_for(session: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared; screen:\n{screen}")


def test_review_in_a_terminal_is_blind(sqlite_url):
    database = Database.open(sqlite_url)
    run_id = make_run(database, spec_with(probes_per_checkin=1))
    factory, _ = scripted_factory([persona_switching_model(10**6)])
    loop = Loop(database, Settings(), factory)
    loop.run_days(run_id, 5)
    checkin_id = loop.opened_checkin
    database.dispose()

    session = f"loopsim-{uuid.uuid4().hex[:8]}"
    command = f"{sys.executable} -m loopsim --db {sqlite_url} checkin review {checkin_id}"
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", command + "; sleep 5")
    try:
        screen = wait_for(session, "your answer")
        assert BEES not in screen and "predicted" not in screen
        with sqlite3.connect(sqlite_url) as conn:
            assert conn.execute("SELECT answered_at FROM probe_pairs").fetchone() == (None,)
        tmux("send-keys", "-t", session, "Dances encode distance.", "Enter")
        screen = wait_for(session, "the simulation predicted")
        with sqlite3.connect(sqlite_url) as conn:
            answered = conn.execute("SELECT human_answer, answered_at FROM probe_pairs").fetchone()
        assert answered[0] == "Dances encode distance." and answered[1] is not None
        assert screen.index("saved.") < screen.index("the simulation predicted")
        tmux("send-keys", "-t", session, "2", "Enter")
        wait_for(session, "decision")
        tmux("send-keys", "-t", session, "approve", "Enter")
        wait_for(session, f"check-in {checkin_id}: approve")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("SELECT decision FROM checkins").fetchone() == ("approve",)
