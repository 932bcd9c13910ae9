"""`checkin review` driven in a real terminal (tmux), as a person would drive it: the
prediction is never on screen before the answer is stored."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid

import pytest

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.testing import default_reply, scripted_factory
from tests.conftest import make_run
from tests.test_checkin import BEES, persona_switching_model, spec_with

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def own_env() -> list[str]:
    """The test's PYTHONPATH for a new tmux session: a tmux server already running (another
    terminal's) would otherwise start the review with its own environment and code."""
    path = os.environ.get("PYTHONPATH")
    return ["-e", f"PYTHONPATH={path}"] if path else []


def wait_for(session: str, text: str, timeout: float = 90) -> str:
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
    tmux(
        "new-session",
        *own_env(),
        "-d",
        "-s",
        session,
        "-x",
        "160",
        "-y",
        "50",
        command + "; sleep 5",
    )
    try:
        screen = wait_for(session, "your answer")
        assert BEES not in screen
        assert "predicted" not in screen
        with sqlite3.connect(sqlite_url) as conn:
            assert conn.execute("SELECT answered_at FROM probe_pairs").fetchone() == (None,)
        tmux("send-keys", "-t", session, "Dances encode distance.", "Enter")
        screen = wait_for(session, "the simulation predicted")
        with sqlite3.connect(sqlite_url) as conn:
            answered = conn.execute("SELECT human_answer, answered_at FROM probe_pairs").fetchone()
        assert answered[0] == "Dances encode distance."
        assert answered[1] is not None
        assert screen.index("saved.") < screen.index("the simulation predicted")
        tmux("send-keys", "-t", session, "2", "Enter")
        wait_for(session, "decision")
        tmux("send-keys", "-t", session, "approve", "Enter")
        wait_for(session, f"check-in {checkin_id}: approve")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("SELECT decision FROM checkins").fetchone() == ("approve",)


def wait_count(session: str, text: str, count: int, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-J", "-S", "-", "-t", session)
        if screen.count(text) >= count:
            return screen
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared {count} times; screen:\n{screen}")


def pairs_now(url: str) -> list[tuple]:
    with sqlite3.connect(url) as conn:
        return conn.execute("SELECT human_answer, rating FROM probe_pairs ORDER BY id").fetchall()


def test_an_interrupted_review_resumes_where_it_stopped(sqlite_url):
    database = Database.open(sqlite_url)
    run_id = make_run(database, spec_with(probes_per_checkin=2))
    factory, _ = scripted_factory([persona_switching_model(10**6)])
    loop = Loop(database, Settings(), factory)
    loop.run_days(run_id, 5)
    checkin_id = loop.opened_checkin
    database.dispose()
    command = f"{sys.executable} -m loopsim --db {sqlite_url} checkin review {checkin_id}"
    resume = f"Resume with: loopsim checkin review {checkin_id}"

    def review() -> str:
        session = f"loopsim-{uuid.uuid4().hex[:8]}"
        sessions.append(session)
        tmux(
            "new-session", *own_env(), "-d", "-s", session, "-x", "200", "-y", "50",
            f"{command}; echo exit=$?; sleep 60",
        )  # fmt: skip
        return session

    sessions: list[str] = []
    try:
        # 1. Answer and rate probe 1, then Ctrl-C at probe 2's answer.
        first = review()
        wait_for(first, "your answer")
        tmux("send-keys", "-t", first, "First view.", "Enter")
        wait_for(first, "agreement, 1")
        tmux("send-keys", "-t", first, "4", "Enter")
        wait_count(first, "your answer", 2)
        tmux("send-keys", "-t", first, "C-c")
        screen = wait_for(first, "exit=")
        assert resume in screen
        assert "exit=130" in screen
        assert "Traceback" not in screen
        assert pairs_now(sqlite_url) == [("First view.", 4), (None, None)]

        # 2. Resumed: probe 1 is shown as stored, not asked; answer probe 2, then Ctrl-D.
        second = review()
        screen = wait_for(second, "your answer")
        assert "your stored answer: First view." in screen
        assert "your stored rating: 4" in screen
        assert screen.count("agreement, 1") == 0
        assert screen.count("your answer (") == 1
        tmux("send-keys", "-t", second, "Second view.", "Enter")
        wait_for(second, "agreement, 1")
        tmux("send-keys", "-t", second, "C-d")
        screen = wait_for(second, "exit=")
        assert resume in screen
        assert "exit=1" in screen
        assert "Traceback" not in screen
        assert pairs_now(sqlite_url) == [("First view.", 4), ("Second view.", None)]

        # 3. Resumed at probe 2's rating: both answers shown, one rating asked; decide.
        third = review()
        screen = wait_for(third, "agreement, 1")
        assert "your stored answer: Second view." in screen
        assert "your answer (" not in screen
        assert screen.index("your stored answer: Second view.") < screen.index(
            BEES, screen.index("probe 2 of 2")
        )
        tmux("send-keys", "-t", third, "2", "Enter")
        wait_for(third, "decision")
        tmux("send-keys", "-t", third, "halt", "Enter")
        wait_for(third, "sure? y/N")
        tmux("send-keys", "-t", third, "Enter")
        wait_for(third, "not decided; choose again.")
        tmux("send-keys", "-t", third, "approve", "Enter")
        screen = wait_for(third, "exit=")
        assert f"check-in {checkin_id}: approve" in screen
        assert "exit=0" in screen
    finally:
        for session in sessions:
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert pairs_now(sqlite_url) == [("First view.", 4), ("Second view.", 2)]
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("SELECT decision FROM checkins").fetchone() == ("approve",)


def test_a_probe_without_a_prediction_asks_no_rating(sqlite_url):
    def no_prediction(messages):
        asked = any("Question:" in m.text for m in messages)
        return "" if asked else default_reply(messages)

    database = Database.open(sqlite_url)
    run_id = make_run(database, spec_with(probes_per_checkin=1))
    factory, _ = scripted_factory([no_prediction])
    loop = Loop(database, Settings(), factory)
    loop.run_days(run_id, 5)
    checkin_id = loop.opened_checkin
    database.dispose()
    session = f"loopsim-{uuid.uuid4().hex[:8]}"
    command = f"{sys.executable} -m loopsim --db {sqlite_url} checkin review {checkin_id}"
    tmux(
        "new-session",
        *own_env(),
        "-d",
        "-s",
        session,
        "-x",
        "200",
        "-y",
        "50",
        command + "; sleep 60",
    )
    try:
        wait_for(session, "your answer")
        tmux("send-keys", "-t", session, "Dances encode distance.", "Enter")
        screen = wait_for(session, "decision (")
        assert "no prediction to compare: the model gave no valid prediction" in screen
        assert "agreement, 1" not in screen  # nothing to rate
        tmux("send-keys", "-t", session, "approve", "Enter")
        screen = wait_for(session, f"check-in {checkin_id}: approve")
        assert "drift not measured" in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert pairs_now(sqlite_url) == [("Dances encode distance.", None)]
