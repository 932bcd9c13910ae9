"""Check-ins from the command line, as a person and as a script would use them."""

from __future__ import annotations

import json
import sqlite3

import pytest

from loopsim.testing import scripted_factory
from tests.conftest import write_spec
from tests.test_checkin import BEES, persona_switching_model

SPEC = """
probes = ["What decides where a colony forages?"]

[persona]
name = "Dr. Test"
background = "Studies bees."

[charter]
agenda = "Find out how bees choose flowers."

[time]
policy = "fixed"
anchor = 2025-06-02

[checkins]
every_days = 2
spot_check_probability = 0.0
probes_per_checkin = 1
"""


@pytest.fixture
def cli(cli_factory, sqlite_url):
    factory, _ = scripted_factory([persona_switching_model(10**6)])
    return cli_factory(sqlite_url, factory)


@pytest.fixture
def open_checkin(cli, tmp_path):
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", SPEC))).stdout.strip()
    stepped = cli("run", "step", run_id, "--days", "5")
    assert stepped.exit_code == 0, stepped.output
    assert "check-in 1 is open" in stepped.stderr and "checkin review 1" in stepped.stderr
    return run_id


def test_list_pending_then_decide_with_an_answers_file(cli, open_checkin, tmp_path):
    pending = json.loads(cli("checkin", "list", "--pending", "--json").stdout)
    assert [(c["id"], c["reason"], c["first_day"], c["last_day"]) for c in pending] == [
        (1, "scheduled", 1, 2)
    ]
    refused = cli("run", "step", open_checkin)
    assert refused.exit_code == 1 and "awaiting_checkin" in refused.stderr
    with sqlite3.connect(cli.url) as conn:
        probe_id = conn.execute("SELECT id FROM probes").fetchone()[0]
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({str(probe_id): {"answer": BEES, "rating": 5}}))
    decided = cli("checkin", "decide", "1", "--approve", "--answers", str(answers))
    assert decided.exit_code == 0 and "drift 0.00" in decided.stderr
    assert json.loads(cli("checkin", "list", "--pending", "--json").stdout) == []
    again = cli("checkin", "decide", "1", "--halt")
    assert again.exit_code == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "already decided" in again.stderr
    assert json.loads(cli("run", "show", open_checkin, "--json").stdout)["status"] == "running"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--approve", "--halt"], "exactly one of"),
        (["--amend"], "--amend needs --note"),
    ],
)
def test_bad_decide_flags_are_one_line(cli, open_checkin, args, message):
    result = cli("checkin", "decide", "1", *args)
    assert result.exit_code == 2 and message in result.stderr


def test_bad_answers_file_is_named(cli, open_checkin, tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text('{"1": {"answer": "", "rating": 9}}')
    result = cli("checkin", "decide", "1", "--approve", "--answers", str(bad))
    assert result.exit_code == 2 and "answer must be non-empty" in result.stderr


def test_review_stores_the_answer_before_showing_the_prediction(cli, open_checkin):
    result = cli(
        "checkin", "review", "1", input="My own view of foraging.\n4\namend\nMark the foragers.\n"
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.index("saved.") < out.index("the simulation predicted:")
    assert out.index("your answer") < out.index(BEES)
    with sqlite3.connect(cli.url) as conn:
        answered, revealed, rating, answer = conn.execute(
            "SELECT answered_at, revealed_at, rating, human_answer FROM probe_pairs"
        ).fetchone()
        correction = conn.execute("SELECT body FROM entries WHERE kind = 'correction'").fetchone()
    assert answered <= revealed and rating == 4 and answer == "My own view of foraging."
    assert correction == ("Mark the foragers.",)


def test_researcher_questions_are_proposed_probes_a_human_must_accept(cli, tmp_path):
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", SPEC))).stdout.strip()
    cli("run", "step", run_id, "--days", "1")
    proposed = json.loads(cli("probe", "list", run_id, "--status", "proposed", "--json").stdout)
    assert [p["source"] for p in proposed] == ["researcher"]
    assert "Which measurement" in proposed[0]["question"]
    accepted = json.loads(cli("probe", "list", run_id, "--status", "accepted", "--json").stdout)
    assert [p["source"] for p in accepted] == ["spec"]  # proposals are never asked as-is
    assert cli("probe", "accept", str(proposed[0]["id"])).exit_code == 0
    again = cli("probe", "accept", str(proposed[0]["id"]))
    assert again.exit_code == 1 and "not proposed" in again.stderr
    added = cli("probe", "add", run_id, "What would change your mind?")
    assert added.exit_code == 0
    accepted = json.loads(cli("probe", "list", run_id, "--status", "accepted", "--json").stdout)
    assert [p["source"] for p in accepted] == ["spec", "researcher", "human"]


def test_review_shows_the_flagged_ideas_first(cli_factory, sqlite_url, tmp_path):
    from loopsim.testing import amplified_reply

    factory, _ = scripted_factory([amplified_reply])
    cli = cli_factory(sqlite_url, factory)
    babble = SPEC + "\n[babble]\nideas = 3\nflag_top = 2\nmin_score = 0\n"
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", babble))).stdout.strip()
    stepped = cli("run", "step", run_id, "--days", "5")
    assert "check-in 1 is open" in stepped.stderr, stepped.output
    with sqlite3.connect(cli.url) as conn:
        by_day = conn.execute(
            "SELECT i.title, c.score FROM entries i JOIN entries c ON c.parent_id = i.id "
            "WHERE i.flagged AND c.kind = 'critique' ORDER BY i.seq"
        ).fetchall()
        ideas = conn.execute("SELECT count(*) FROM entries WHERE kind = 'idea'").fetchone()[0]
    assert len(by_day) == 4 and ideas == 6  # two of three ideas a day, two days
    # Best score first (ties oldest first). The scripted critic's scores are not in the
    # order the ideas were written, so listing them by day would fail here.
    flagged = [title for title, _ in sorted(by_day, key=lambda row: -row[1])]
    assert flagged != [title for title, _ in by_day]
    result = cli("checkin", "review", "1", input="My own view.\n3\napprove\n")
    assert result.exit_code == 0, result.output
    out = result.stdout
    head, rest = out.split("all days:", 1)
    assert "most promising ideas (4)" in head
    assert all("idea (score" in line for line in head.splitlines() if "★" in line)
    assert [line.split(" · ", 1)[1] for line in head.splitlines() if "★" in line] == flagged
    assert "★" not in rest
