"""The Python API (``loopsim.open``) and the example that uses it, against real SQLite
and PostgreSQL with the scripted model at the network seam."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import loopsim
from loopsim.config import Settings
from loopsim.errors import InvalidState, SpecError
from loopsim.testing import scripted_factory
from tests.conftest import SPEC
from tests.test_compare import NOISY, thoughtful

ROOT = Path(__file__).resolve().parent.parent


def test_a_notebook_creates_steps_forks_compares_and_exports(any_url):
    factory, _ = scripted_factory([thoughtful])
    settings = Settings(embeddings="lexical")
    with loopsim.open(any_url, settings=settings, chat_factory=factory) as lab:
        parent = lab.create_run({**SPEC, "budget": {"days": 10}}, name="parent", model="s:1")
        assert [r.status for r in lab.step(parent, days=3)] == ["committed"] * 3
        noisy = lab.fork(parent, 2, {"conditional": {"framing": NOISY}}, name="noisy")
        calm = lab.fork(parent, 2)
        lab.step(noisy, days=2)
        lab.step(calm, days=2)

        listed = {run.id: run for run in lab.runs()}
        assert (listed[noisy].parent_run_id, listed[noisy].fork_day) == (parent, 2)
        assert listed[noisy].last_day == 4

        result = lab.compare(calm, noisy)
        assert result.prefix.days == 2
        assert [index for index, _ in result.divergence] == [3, 4]
        assert all(value > 0 for _, value in result.divergence)
        assert result.to_dict()["spec_differs"] == ["conditional"]
        assert lab.compare(parent, calm).divergence == [(3, 0.0)]

        html = lab.export(noisy, "html", compare_parent=True)
        assert 'id="compare"' in html
        assert f'href="{parent}.html"' in html
        assert "Compared with its parent" not in lab.export(noisy, "html")
        assert lab.export(noisy, "md").startswith("#")
        assert lab.checkins(noisy) == []

        with pytest.raises(SpecError, match="give one of approve"):
            lab.decide(1, "maybe")
        with pytest.raises(InvalidState, match="cannot fork it at day 9"):
            lab.fork(parent, 9)
        with pytest.raises(SpecError, match="cannot be overridden"):
            lab.fork(parent, 1, {"probes": ["What?"]})


def test_export_compare_parent_in_the_cli_draws_the_comparison(cli_factory, sqlite_url, tmp_path):
    factory, _ = scripted_factory([thoughtful])
    with loopsim.open(sqlite_url, chat_factory=factory) as lab:
        parent = lab.create_run({**SPEC, "budget": {"days": 10}}, name="parent", model="s:1")
        lab.step(parent, days=2)
        child = lab.fork(parent, 1, {"conditional": {"framing": NOISY}})
        lab.step(child, days=1)
    cli = cli_factory(sqlite_url, factory, embeddings="lexical")
    out = tmp_path / "child.html"
    result = cli("export", child, "--format", "html", "--compare-parent", "-o", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'id="compare"' in page
    assert re.search(r"<td>2</td>.*?<td>0\.\d{3}</td>", page, re.S)
    refused = cli("export", parent, "--format", "html", "--compare-parent")
    assert refused.exit_code != 0
    assert "is not a fork" in refused.stderr
    refused = cli("export", child, "--compare-parent")
    assert "only for --format html" in refused.stderr


def test_the_example_runs_against_the_scripted_model_without_matplotlib(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LOOPSIM_EMBEDDINGS": "lexical"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "forks.py"), "--db", str(tmp_path / "f.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "they share its days 1-2; spec differs in: conditional" in done.stdout
    rows = re.findall(r"^\s+(\d+)\s.*\s(\d\.\d{3})$", done.stdout, re.M)
    assert [int(day) for day, _ in rows] == [3, 4, 5]
    assert all(float(value) > 0 for _, value in rows)
    assert "mean divergence: 0." in done.stdout


def test_decide_checks_answers_as_the_cli_does_and_stores_nothing_bad(sqlite_url):
    """The Python API took a rating of 9 (agreement 2.0, a drift of -1.0 stored) and
    raised a TypeError for a rating of "high"; it approved with probes unanswered, which
    `checkin decide` refuses without --skip-probes."""
    factory, _ = scripted_factory([thoughtful])
    spec = {
        **SPEC,
        "budget": {"days": 10},
        "probes": ["How far do foragers fly?", "What decides a patch?"],
        "checkins": {"every_days": 2, "spot_check_probability": 0.0},
    }
    with loopsim.open(
        sqlite_url, settings=Settings(embeddings="lexical"), chat_factory=factory
    ) as lab:
        run = lab.create_run(spec, name="api", model="s:1")
        lab.step(run, days=2)
        (checkin,) = lab.checkins(run, pending=True)
        for bad, says in [
            ({"answer": "About a kilometre.", "rating": 9}, "rating must be a whole number"),
            ({"answer": "About a kilometre.", "rating": "high"}, "rating must be a whole"),
            ({"answer": "  ", "rating": 3}, "answer must be non-empty text"),
            ("About a kilometre.", "expected {answer, rating}"),
        ]:
            with pytest.raises(SpecError, match=re.escape(says)):
                lab.decide(checkin.id, "approve", answers={1: bad})
        with pytest.raises(SpecError, match="have no answer"):
            lab.decide(checkin.id, "approve")
        assert lab.checkins(run, pending=True) == [checkin]  # nothing was decided
        outcome = lab.decide(checkin.id, "approve", skip_probes=True)
        assert outcome.drift.score is None or 0 <= outcome.drift.score <= 1
        assert lab.checkins(run, pending=True) == []


def test_a_ctrl_c_inside_a_callback_from_c_still_stops_step(sqlite_url):
    """The embedded model's sampler is a callback from C, where an exception raised is
    swallowed and its token's work lost (llama.cpp then aborted the process). The
    ``loopsim`` command re-sends such a Ctrl-C; a program on the Python API left Python's
    own handler in place, so the Ctrl-C was lost there. A caller's own handler is kept."""
    import signal
    import time

    from loopsim.interrupts import NATIVE_CALLBACKS

    returned: list[str] = []

    def sampler() -> str:  # as a callback from C: registered, and the signal lands in it
        signal.raise_signal(signal.SIGINT)
        return "sampled"

    def reply(messages):
        if not returned:
            returned.append(sampler())
        return thoughtful(messages)

    def step_then_wait(lab, run):
        lab.step(run, days=3)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # if it is sent again only after step returned
            time.sleep(0.01)

    NATIVE_CALLBACKS.add(sampler.__code__)
    try:
        factory, _ = scripted_factory([reply])
        with loopsim.open(sqlite_url, chat_factory=factory) as lab:
            run = lab.create_run({**SPEC, "budget": {"days": 10}}, name="api", model="s:1")
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            with pytest.raises(KeyboardInterrupt):
                step_then_wait(lab, run)
            assert returned == ["sampled"]  # not raised inside the callback
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

            presses: list[int] = []
            returned.clear()
            previous = signal.signal(signal.SIGINT, lambda signum, frame: presses.append(signum))
            try:
                days = lab.step(run, days=1)
                assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
            finally:
                signal.signal(signal.SIGINT, previous)
            assert presses == [signal.SIGINT]  # the caller's handler got it, once
            assert [d.status for d in days] == ["committed"]
            assert lab.run(run).last_day >= 1
    finally:
        NATIVE_CALLBACKS.discard(sampler.__code__)
