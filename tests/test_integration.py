"""The real embedded model (llama.cpp running Gemma 3 270M), end to end. Slow.

The 270M model fails some days; a failed day is recorded honestly and resumed, as a
person would. What these tests hold is the machinery, not the prose.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

pytest.importorskip("llama_cpp")

from loopsim.chat.handle import build_chat
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord
from loopsim.schemas import (
    DayStatus,
    RunStatus,
    load_spec,
)
from tests.conftest import make_run

pytestmark = pytest.mark.integration
MODEL = "llamacpp:gemma3-270m"
DEMO_SPEC = Path(__file__).parent.parent / "loopsim" / "demo.toml"


@pytest.fixture
def spec():
    return load_spec(DEMO_SPEC)


def resume(database: Database, run_id: str) -> None:
    with database.write() as session:
        store = Store(session)
        run = store.get_run(run_id)
        if run.status == RunStatus.FAILED:
            store.set_status(run, RunStatus.RUNNING)


def test_two_real_days_on_the_embedded_model(database, spec):
    run_id = make_run(database, spec, model=MODEL)
    loop = Loop(database, Settings(), build_chat(Settings()))
    committed = tries = 0
    while committed < 2 and tries < 12:
        (result,) = loop.run_days(run_id, 1)
        tries += 1
        committed += result.status == DayStatus.COMMITTED
        resume(database, run_id)
    assert committed == 2, f"only {committed} valid days in {tries} tries"
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        assert store.verify_chain(run_id).ok
        for day in days:
            assert "gemma-3-270m" in day.model_version
            assert "llama-cpp-python" in day.model_version
            # Without the persona and framing a first day is ~120 tokens; with them ~400.
            # A smaller count would mean the chat template dropped the system prompt.
            assert day.tokens_in > 300
            assert day.tokens_out > 0
            # Gemma's format has no system role: the call log holds the one user turn the
            # model got, the system text at its head.
            (call, _), *_ = store.run_calls(run_id, day_index=day.index)
            assert [m["role"] for m in call.messages] == ["user"]
            assert spec.persona.name in call.messages[0]["content"]
            assert day.raw_output
            entries = store.list_entries(run_id, day_index=day.index)
            if day.status == DayStatus.COMMITTED:
                assert entries
                assert all(e.prompt_hash == day.prompt_hash for e, _, _ in entries)
            else:
                assert entries == []
                assert day.error


def test_an_amplified_day_on_the_embedded_model(database, spec):
    """Sub-questions and babble with the real model: the grammars for the day report,
    the sub-answer and the critique load in llama.cpp, and a day's tree commits."""
    amplified = spec.model_copy(
        update={
            "subquestions": spec.subquestions.model_copy(update={"depth": 1, "breadth": 1}),
            "babble": spec.babble.model_copy(update={"ideas": 1, "min_score": 0}),
        }
    )
    run_id = make_run(database, amplified, model=MODEL)
    loop = Loop(database, Settings(), build_chat(Settings()))
    committed = tries = 0
    while committed < 1 and tries < 6:
        (result,) = loop.run_days(run_id, 1)
        tries += 1
        committed += result.status == DayStatus.COMMITTED
        resume(database, run_id)
    assert committed == 1, f"no valid day in {tries} tries"
    with database.read() as session:
        store = Store(session)
        assert store.verify_chain(run_id).ok
        rows = [e for e, _, status in store.list_entries(run_id) if status == DayStatus.COMMITTED]
        calls = session.scalars(select(CallRecord).where(CallRecord.run_id == run_id)).all()
    by_id = {e.id: e for e in rows}
    for entry in rows:
        if entry.kind in ("answer", "critique"):
            assert by_id[entry.parent_id].kind in ("subquestion", "idea")
    roles = {c.role for c in calls}
    assert "day" in roles
    # Whatever the 270M model chose to pose, every call it made was recorded, and every
    # idea got a critique entry (the critic's, or the system's note that it failed).
    ideas = [e for e in rows if e.kind == "idea"]
    critiques = [e for e in rows if e.kind == "critique"]
    assert len(critiques) == len(ideas)
    assert len([e for e in rows if e.kind == "subquestion"]) <= 1


def cli(db: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loopsim", "--db", str(db), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_leaves_three_verified_original_days_and_a_report(tmp_path):
    """`make demo`'s 3 days: verified, reported, and in the model's own words. The 270M
    model copied the prompt's example entry ("The simplest explanation first") in 9 of 9
    days; now no entry shares a run of 8 words with its day's instructions."""
    from loopsim.researcher.copies import copied_run, shingles
    from loopsim.researcher.prompts import EXAMPLE_ENTRY

    db, report = tmp_path / "demo.db", tmp_path / "report.md"
    proc = cli(db, "demo", "--days", "3", "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.strip()
    assert cli(db, "record", "verify", run_id).returncode == 0
    info = json.loads(cli(db, "run", "show", run_id, "--json").stdout)
    assert info["days_committed"] == 3
    md = cli(db, "export", run_id, "--format", "md").stdout
    assert md == report.read_text()
    assert md.count(": 2025-06-02") >= 3
    assert "### " in md
    database = Database.open(str(db))
    try:
        with database.read() as session:
            store = Store(session)
            committed = [d for d in store.list_days(run_id) if d.status == DayStatus.COMMITTED]
            assert len(committed) == 3
            for day in committed:
                system = "\n".join(m["content"] for m in day.prompt if m["role"] == "system")
                assert EXAMPLE_ENTRY["title"] not in system  # no example to copy
                source = shingles(system)
                entries = store.list_entries(run_id, day_index=day.index)
                assert entries
                for entry, _, _ in entries:
                    for text in (entry.title, entry.body):
                        assert copied_run(text, source) is None, (day.index, text)
    finally:
        database.dispose()


def test_sigkill_mid_step_then_continue(tmp_path, spec):
    db = tmp_path / "kill.db"
    assert cli(db, "db", "upgrade").returncode == 0
    database = Database.open(str(db))
    run_id = make_run(database, spec, model=MODEL)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loopsim", "--db", str(db), "run", "step", run_id, "--days", "5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        with database.read() as session:
            if Store(session).count_days(run_id) >= 1:
                break
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the next day's model call
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        assert [d.index for d in days] == list(range(1, len(days) + 1))
        assert store.verify_chain(run_id).ok
        before = len(days)
    assert before >= 1
    resume(database, run_id)
    cli(db, "run", "step", run_id, "--days", "1")
    with database.read() as session:
        store = Store(session)
        assert [d.index for d in store.list_days(run_id)] == list(range(1, before + 2))
        assert store.verify_chain(run_id).ok
    database.dispose()


def test_ctrl_c_finishes_the_day_in_flight_then_stops(tmp_path, spec):
    db = tmp_path / "int.db"
    assert cli(db, "db", "upgrade").returncode == 0
    database = Database.open(str(db))
    run_id = make_run(database, spec, model=MODEL)
    err = ""
    for _attempt in range(4):  # a failed day ends the step early; resume and try again
        resume(database, run_id)
        with database.read() as session:
            before = Store(session).count_days(run_id)
        proc = subprocess.Popen(
            [sys.executable, "-m", "loopsim", "--db", str(db), "run", "step", run_id, "-n", "5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            with database.read() as session:
                if Store(session).count_days(run_id) > before:
                    break
            time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=300)
            break
        proc.communicate()
    assert "stopping after this day" in err
    assert "Traceback" not in err
    with database.read() as session:
        store = Store(session)
        days = store.list_days(run_id)
        assert len(days) <= before + 2  # the day in flight finished; no more began
        assert [d.index for d in days] == list(range(1, len(days) + 1))
        assert store.verify_chain(run_id).ok
    database.dispose()


def test_serve_sigterm_abandons_an_embedded_generation_within_the_bound(tmp_path, spec):
    """The embedded model generates on a thread that cannot be interrupted: SIGTERM must
    still exit 0 within grace + a few seconds, releasing the lease, writing nothing half."""
    db = tmp_path / "int.db"
    assert cli(db, "db", "upgrade").returncode == 0
    database = Database.open(str(db))
    run_id = make_run(database, spec, model=MODEL)
    resume(database, run_id)
    with database.write() as session:
        store = Store(session)
        store.set_status(store.get_run(run_id), RunStatus.RUNNING)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loopsim",
            "--db",
            str(db),
            "serve",
            "--http",
            "off",
            "--grace-seconds",
            "0.5",
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )

    def events() -> list[str]:
        lines = log.read_text().splitlines()
        return [json.loads(line).get("event") for line in lines if line.startswith("{")]

    def claimed() -> bool:
        assert proc.poll() is None, log.read_text()
        return "lease.claimed" in events()

    def model_mapped() -> bool:
        assert proc.poll() is None, log.read_text()
        return ".gguf" in Path(f"/proc/{proc.pid}/maps").read_text()

    # A claim is not yet a day under way: the worker first builds its loop (importing
    # langchain), and a stop that lands before that is done ends the task cleanly, with
    # nothing to abandon. Once llama.cpp has mapped the model file, the day is loading
    # or generating (a day of the 270M model takes far longer than this test's bound),
    # on a thread nothing can interrupt.
    deadline = time.monotonic() + 300
    while not claimed():
        assert time.monotonic() < deadline, "the run was never claimed"
        time.sleep(0.1)
    while not model_mapped():
        assert time.monotonic() < deadline, "the day never loaded the model"
        time.sleep(0.05)
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    took = time.monotonic() - began
    err = log.read_text()
    assert proc.returncode == 0
    assert "Traceback" not in err
    assert took < 0.5 + 5, f"took {took:.1f} s"
    assert "stop.abandoned" in events()  # a day was in flight, and it was given up
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        days = store.list_days(run_id)
        assert run.lease_owner is None
        assert [d.index for d in days] == list(range(1, len(days) + 1))
        assert store.verify_chain(run_id).ok
    database.dispose()
