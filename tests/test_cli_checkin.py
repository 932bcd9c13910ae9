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
    # Exit 3: stopped at a check-in, so a script can tell it from five days done.
    assert stepped.exit_code == 3, stepped.output
    assert "check-in 1 is open" in stepped.stderr
    assert "checkin review 1" in stepped.stderr
    return run_id


def test_run_step_exits_0_when_every_day_ran_and_3_at_a_check_in(cli, tmp_path):
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", SPEC))).stdout.strip()
    first = cli("run", "step", run_id)
    assert first.exit_code == 0, first.output
    assert "check-in" not in first.stderr
    second = cli("run", "step", run_id, "--days", "4")
    assert second.exit_code == 3, second.output
    assert json.loads(cli("run", "show", run_id, "--json").stdout)["status"] == "awaiting_checkin"


def test_list_pending_then_decide_with_an_answers_file(cli, open_checkin, tmp_path):
    pending = json.loads(cli("checkin", "list", "--pending", "--json").stdout)
    assert [(c["id"], c["reason"], c["first_day"], c["last_day"]) for c in pending] == [
        (1, "scheduled", 1, 2)
    ]
    # Stepping a run that waits stops where it is, as a step that reached the check-in
    # would: exit 3, the check-in named, no day written, no bar left behind.
    waiting = cli("run", "step", open_checkin)
    assert waiting.exit_code == 3, waiting.output
    assert "check-in 1 is open" in waiting.stderr
    assert "stepping" not in waiting.stderr
    with sqlite3.connect(cli.url) as conn:
        probe_id = conn.execute("SELECT id FROM probes").fetchone()[0]
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({str(probe_id): {"answer": BEES, "rating": 5}}))
    decided = cli("checkin", "decide", "1", "--approve", "--answers", str(answers))
    assert decided.exit_code == 0
    assert "drift 0.00" in decided.stderr
    assert json.loads(cli("checkin", "list", "--pending", "--json").stdout) == []
    again = cli("checkin", "decide", "1", "--halt")
    assert again.exit_code == 1
    assert len(again.stderr.strip().splitlines()) == 1
    assert "already decided" in again.stderr
    assert json.loads(cli("run", "show", open_checkin, "--json").stdout)["status"] == "running"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--approve", "--halt"], "exactly one of"),
        (["--amend"], "--amend needs --note"),
    ],
)
def test_bad_decide_flags_are_one_line(cli, open_checkin, args, message):
    result = cli("checkin", "decide", "1", *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_bad_answers_file_is_named(cli, open_checkin, tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text('{"1": {"answer": "", "rating": 9}}')
    result = cli("checkin", "decide", "1", "--approve", "--answers", str(bad))
    assert result.exit_code == 2
    assert "answer must be non-empty" in result.stderr


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
    assert answered <= revealed
    assert rating == 4
    assert answer == "My own view of foraging."
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
    assert again.exit_code == 1
    assert "not proposed" in again.stderr
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
    assert len(by_day) == 4
    assert ideas == 6
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


THREE = SPEC.replace(
    'probes = ["What decides where a colony forages?"]',
    'probes = ["What decides where a colony forages?", "What would you measure first?", '
    '"What would change your mind?"]',
).replace("probes_per_checkin = 1", "probes_per_checkin = 3")


def spec_with_probes(n: int) -> str:
    questions = ", ".join(f'"Throwaway question number {i}?"' for i in range(n))
    return SPEC.replace(
        'probes = ["What decides where a colony forages?"]', f"probes = [{questions}]"
    )


@pytest.fixture
def three_probes(cli, tmp_path):
    """A check-in asking 3 probes whose ids are 7, 8 and 9: an earlier run holds 1-6."""
    cli("run", "create", str(write_spec(tmp_path / "other.toml", spec_with_probes(6))))
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", THREE))).stdout.strip()
    assert cli("run", "step", run_id, "--days", "2").exit_code == 3  # stopped at a check-in
    (c,) = json.loads(cli("checkin", "list", "--pending", "--json").stdout)
    assert [p["probe_id"] for p in c["pairs"]] == [7, 8, 9]
    return run_id, c["id"]


def stored_pairs(cli):
    with sqlite3.connect(cli.url) as conn:
        return conn.execute(
            "SELECT probe_id, human_answer, rating FROM probe_pairs ORDER BY id"
        ).fetchall()


def checkin_decision(cli, checkin_id):
    with sqlite3.connect(cli.url) as conn:
        return conn.execute("SELECT decision FROM checkins WHERE id = ?", (checkin_id,)).fetchone()


def answers_file(tmp_path, keys):
    path = tmp_path / "ans.json"
    path.write_text(json.dumps({k: {"answer": f"{BEES} ({k})", "rating": 4} for k in keys}))
    return path


def test_answers_keyed_by_position_reach_their_probes(cli, three_probes, tmp_path):
    _run_id, checkin_id = three_probes
    path = answers_file(tmp_path, ["1", "2", "3"])
    decided = cli("checkin", "decide", str(checkin_id), "--approve", "--answers", str(path))
    assert decided.exit_code == 0, decided.output
    assert "drift not measured" not in decided.stderr
    assert "drift 0." in decided.stderr
    assert stored_pairs(cli) == [
        (7, f"{BEES} (1)", 4),
        (8, f"{BEES} (2)", 4),
        (9, f"{BEES} (3)", 4),
    ]


def test_answers_keyed_by_probe_id_reach_their_probes(cli, three_probes, tmp_path):
    _run_id, checkin_id = three_probes
    path = answers_file(tmp_path, ["#9", "8", "#7"])  # a bare 8 can only be probe id 8
    decided = cli("checkin", "decide", str(checkin_id), "--approve", "--answers", str(path))
    assert decided.exit_code == 0, decided.output
    assert stored_pairs(cli) == [
        (7, f"{BEES} (#7)", 4),
        (8, f"{BEES} (8)", 4),
        (9, f"{BEES} (#9)", 4),
    ]


@pytest.mark.parametrize(
    "keys",
    [["1", "2", "99"], ["#1", "2", "3"], ["1", "#7", "3"], ["0"]],
    ids=["unknown", "another-runs-probe", "twice", "zero"],
)
def test_answers_that_match_no_probe_are_refused_and_change_nothing(
    cli, three_probes, tmp_path, keys
):
    run_id, checkin_id = three_probes
    path = answers_file(tmp_path, keys)
    refused = cli("checkin", "decide", str(checkin_id), "--approve", "--answers", str(path))
    assert refused.exit_code == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "nothing changed" in line
    if keys != ["1", "#7", "3"]:
        assert '"1" to "3"' in line
        assert '"#7", "#8", "#9"' in line
    assert checkin_decision(cli, checkin_id) == (None,)
    assert stored_pairs(cli) == [(7, None, None), (8, None, None), (9, None, None)]
    assert json.loads(cli("run", "show", run_id, "--json").stdout)["status"] == "awaiting_checkin"


def test_a_bare_key_that_could_mean_two_probes_is_refused(cli, tmp_path):
    # Probe ids 2, 3 and 4: a bare "2" is probe 2 of 3 (#3) or probe id 2 (probe 1 of 3).
    cli("run", "create", str(write_spec(tmp_path / "other.toml", spec_with_probes(1))))
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", THREE))).stdout.strip()
    cli("run", "step", run_id, "--days", "2")
    path = answers_file(tmp_path, ["1", "2", "4"])
    refused = cli("checkin", "decide", "1", "--approve", "--answers", str(path))
    assert refused.exit_code == 2
    assert '"2" could be probe 2 of 3 (#3) or probe id #2' in refused.stderr
    assert checkin_decision(cli, 1) == (None,)
    path = answers_file(tmp_path, ["#2", "#3", "4"])
    assert cli("checkin", "decide", "1", "--approve", "--answers", str(path)).exit_code == 0


def test_approving_with_unanswered_probes_needs_skip_probes(cli, three_probes, tmp_path):

    run_id, checkin_id = three_probes
    path = answers_file(tmp_path, ["2"])
    refused = cli("checkin", "decide", str(checkin_id), "--approve", "--answers", str(path))
    assert refused.exit_code == 2
    (line,) = refused.stderr.strip().splitlines()
    assert "probes 1, 3 of 3 have no answer" in line
    assert "--skip-probes" in line
    assert checkin_decision(cli, checkin_id) == (None,)
    assert stored_pairs(cli)[1] == (8, None, None)  # the given answer was not kept either
    done = cli(
        "checkin", "decide", str(checkin_id), "--approve", "--answers", str(path), "--skip-probes"
    )
    assert done.exit_code == 0, done.output
    assert stored_pairs(cli) == [(7, None, None), (8, f"{BEES} (2)", 4), (9, None, None)]
    (record,) = json.loads(cli("checkin", "list", "--json").stdout)
    assert record["decided_without_answers"] is True
    assert record["unanswered"] == 2
    md = cli("export", run_id, "--format", "md").stdout
    assert "approve without answers (2 of 3 probes unanswered)" in md
    jsonl = [json.loads(x) for x in cli("export", run_id, "--format", "jsonl").stdout.splitlines()]
    (exported,) = [r for r in jsonl if r["type"] == "checkin"]
    assert exported["decided_without_answers"] is True


def test_reject_and_halt_need_no_answers(cli, three_probes):
    _, checkin_id = three_probes
    pending = cli("checkin", "show", str(checkin_id)).stdout
    assert pending.count("answer:     (not answered yet)") == 3
    assert cli("checkin", "decide", str(checkin_id), "--halt").exit_code == 0
    # Decided, the probes are never answered: "yet" said otherwise.
    shown = cli("checkin", "show", str(checkin_id)).stdout
    assert shown.count("answer:     (not answered)") == 3
    assert "not answered yet" not in shown


def test_a_review_stopped_by_end_of_input_resumes_without_overwriting(cli, three_probes):
    _, checkin_id = three_probes
    first = cli("checkin", "review", str(checkin_id), input="First view.\n4\nSecond view.\n")
    assert first.exit_code == 1
    assert "Traceback" not in first.output
    (line,) = first.stderr.strip().splitlines()
    assert f"Resume with: loopsim checkin review {checkin_id}" in line
    assert stored_pairs(cli) == [(7, "First view.", 4), (8, "Second view.", None), (9, None, None)]
    again = cli("checkin", "review", str(checkin_id), input="2\nThird view.\n5\napprove\n")
    assert again.exit_code == 0, again.output
    out = again.stdout
    assert "2 of 3 answers and 1 ratings are stored" in out
    assert "your stored answer: First view." in out
    assert "your stored rating: 4" in out
    assert "your stored answer: Second view." in out
    assert out.count("your answer (the prediction") == 1  # only probe 3 is asked
    assert out.count("agreement, 1 (none)") == 2  # probes 2 and 3
    assert stored_pairs(cli) == [
        (7, "First view.", 4),
        (8, "Second view.", 2),
        (9, "Third view.", 5),
    ]
    assert checkin_decision(cli, checkin_id) == ("approve",)


def test_reject_and_halt_ask_for_confirmation(cli, open_checkin):
    result = cli("checkin", "review", "1", input="My view.\n3\nreject\nn\nhalt\n\napprove\n")
    assert result.exit_code == 0, result.output
    assert "reject reverts days 1-2" in result.stdout
    assert "halt stops run" in result.stdout
    assert result.stdout.count("not decided; choose again.") == 2
    assert checkin_decision(cli, 1) == ("approve",)


def test_halt_goes_ahead_once_confirmed(cli, open_checkin):
    result = cli("checkin", "review", "1", input="My view.\n3\nhalt\ny\n")
    assert result.exit_code == 0, result.output
    assert checkin_decision(cli, 1) == ("halt",)
    assert json.loads(cli("run", "show", open_checkin, "--json").stdout)["status"] == "halted"


def test_show_prints_one_checkin_and_never_an_unanswered_prediction(cli, three_probes):
    _, checkin_id = three_probes
    cli("checkin", "review", str(checkin_id), input="First view.\n4\n")  # then end of input
    shown = cli("checkin", "show", str(checkin_id))
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "scheduled" in out
    assert "1-2" in out
    assert "pending" in out
    assert "probe 1 of 3 (#7)" in out
    assert "First view." in out
    assert "rating:     4" in out
    assert out.count(BEES) == 1  # the answered probe's prediction, and no other
    assert out.count("(hidden until the blind answer is stored)") == 2
    assert "your answer" not in out  # no review started
    record = json.loads(cli("checkin", "show", str(checkin_id), "--json").stdout)
    assert [p["prediction"] for p in record["pairs"]] == [BEES, None, None]
    assert [p["human_answer"] for p in record["pairs"]] == ["First view.", None, None]
    assert stored_pairs(cli) == [(7, "First view.", 4), (8, None, None), (9, None, None)]
    missing = cli("checkin", "show", "99")
    assert missing.exit_code != 0
    assert missing.stderr.startswith("error: ")


def test_the_example_spec_walkthrough_shows_a_drift_score(cli):
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "bee-foraging.toml"
    assert "examples/bee-foraging.toml" in (example.parent.parent / "README.md").read_text()
    run_id = cli("run", "create", str(example)).stdout.strip()
    stepped = cli("run", "step", run_id, "--days", "5")
    assert "check-in 1 is open" in stepped.stderr, stepped.output
    assert len(json.loads(cli("checkin", "show", "1", "--json").stdout)["pairs"]) == 3
    review = cli(
        "checkin",
        "review",
        "1",
        input="Distance.\n3\nDance timing.\n4\nA far patch wins.\n2\napprove\n",
    )
    assert review.exit_code == 0, review.output
    assert "probe 3 of 3" in review.stdout
    assert "\ndrift " in review.stdout
    assert "check-in 1: approve" in review.stderr
    assert "drift not measured" not in review.stderr


def test_decide_says_when_the_adaptive_interval_changes(cli, open_checkin, tmp_path):
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"1": {"answer": "Tidal pools and kelp.", "rating": 1}}))
    decided = cli("checkin", "decide", "1", "--approve", "--answers", str(answers))
    assert decided.exit_code == 0, decided.output
    # Each line whole, never folded at the console's 80 columns (issue 19).
    lines = decided.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("check-in 1: approve; agreement 0.00")
    assert lines[0].endswith("alarm)")
    assert lines[1].startswith("next scheduled check-in after 1 more day, shorter than 2: drift")
    assert lines[1].endswith("reached the alarm 0.70")


def test_run_step_says_it_is_predicting_each_probe(cli, tmp_path):
    # After the day that opens a check-in, the predictions (minutes each on the embedded
    # model) used to run in silence, which reads as a hang.
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", THREE))).stdout.strip()
    stepped = cli("run", "step", run_id, "--days", "2")
    assert stepped.exit_code == 3, stepped.output
    lines = stepped.stderr.splitlines()
    start = lines.index("predicting answers to 3 probes for a check-in (a model call each)...")
    assert [line.split(" predicted in ")[0] for line in lines[start + 1 : start + 4]] == [
        "  probe 1 of 3",
        "  probe 2 of 3",
        "  probe 3 of 3",
    ]
    day_2 = next(n for n, line in enumerate(lines) if line.startswith("day 2 "))
    opened = next(n for n, line in enumerate(lines) if "check-in 1 is open" in line)
    assert day_2 < start < opened
    # It says why it opened: here the schedule, elsewhere an alarm or a spot check.
    assert lines[opened].startswith("check-in 1 is open (scheduled) and the run waits for it")


def no_predictions(messages):
    """A model whose days are valid and whose every probe prediction is empty."""
    from loopsim.testing import default_reply

    return "" if any("Question:" in m.text for m in messages) else default_reply(messages)


@pytest.fixture
def unpredicted(cli_factory, sqlite_url, tmp_path):
    """A check-in whose 3 probes all have no valid prediction."""
    factory, _ = scripted_factory([no_predictions])
    cli = cli_factory(sqlite_url, factory)
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", THREE))).stdout.strip()
    stepped = cli("run", "step", run_id, "--days", "2")
    assert stepped.exit_code == 3, stepped.output
    assert stepped.stderr.count(": no valid prediction (") == 3, stepped.stderr
    return cli


def test_review_asks_no_rating_where_there_is_no_prediction(unpredicted):
    cli = unpredicted
    first = cli("checkin", "review", "1", input="First view.\n")  # then end of input
    assert first.exit_code == 1
    assert "no prediction to compare" in first.stdout
    assert "agreement, 1 (none)" not in first.stdout
    assert "the simulation predicted" not in first.stdout
    again = cli("checkin", "review", "1", input="Second view.\nThird view.\napprove\n")
    assert again.exit_code == 0, again.output
    out = again.stdout
    assert "your stored answer: First view." in out
    assert out.count("no prediction to compare: the model gave") == 3  # resumed probe 1 too
    assert "agreement, 1 (none)" not in out
    assert out.count("probe 3: no prediction to compare, not counted") == 1
    assert stored_pairs(cli) == [
        (1, "First view.", None),
        (2, "Second view.", None),
        (3, "Third view.", None),
    ]
    # Nothing was compared, so there is no drift to report: not a drift of 1.00.
    assert "check-in 1: approve; drift not measured" in again.stderr
    (record,) = json.loads(cli("checkin", "list", "--json").stdout)
    assert record["drift_score"] is None


def test_drift_counts_only_the_probes_with_a_prediction(cli_factory, sqlite_url, tmp_path):
    from loopsim.testing import default_reply

    def first_probe_unpredicted(messages):
        text = "\n".join(m.text for m in messages)
        if "Question:" not in text:
            return default_reply(messages)
        return "" if "colony forages" in text else BEES

    factory, _ = scripted_factory([first_probe_unpredicted])
    cli = cli_factory(sqlite_url, factory)
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", THREE))).stdout.strip()
    assert cli("run", "step", run_id, "--days", "2").exit_code == 3
    review = cli("checkin", "review", "1", input=f"Mine.\n{BEES}\n5\n{BEES}\n5\napprove\n")
    assert review.exit_code == 0, review.output
    assert "check-in 1: approve; agreement 1.00; drift 0.00" in review.stderr


def test_decide_with_skip_probes_says_without_answers(cli, three_probes):
    _, checkin_id = three_probes
    done = cli("checkin", "decide", str(checkin_id), "--approve", "--skip-probes")
    assert done.exit_code == 0, done.output
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"check-in {checkin_id}: approve without answers (3 of 3 probes ")


def test_a_failed_day_exits_1_and_the_same_command_tries_it_again(
    cli_factory, sqlite_url, tmp_path
):
    # The README walkthrough: with a small model a day may fail on the way to the check-in.
    from loopsim.testing import default_reply

    broken = [True]

    def reply(messages):
        return "not a day report" if broken[0] else default_reply(messages)

    factory, _ = scripted_factory([reply])
    cli = cli_factory(sqlite_url, factory)
    run_id = cli("run", "create", str(write_spec(tmp_path / "s.toml", SPEC))).stdout.strip()
    failed = cli("run", "step", run_id, "--days", "2")
    assert failed.exit_code == 1, failed.output
    (line,) = [x for x in failed.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: day 1 failed: ")
    assert line.endswith(f"`loopsim run step {run_id}` tries day 1 again")
    broken[0] = False
    again = cli("run", "step", run_id, "--days", "2")
    assert again.exit_code == 3, again.output  # days 1 and 2, then the check-in
    assert [x.split()[1] for x in again.stderr.splitlines() if x.startswith("day ")] == ["1", "2"]
    assert "check-in 1 is open" in again.stderr


def test_demo_says_it_is_predicting_when_it_reaches_a_check_in(cli, tmp_path):
    # The built-in demo checks in after day 5; its predictions ran in silence too.
    report = tmp_path / "demo-report.md"
    result = cli("demo", "--days", "5", "--report", str(report))
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    start = lines.index("predicting answers to 2 probes for a check-in (a model call each)...")
    assert lines[start + 1].startswith("  probe 1 of 2 predicted in ")
    assert lines[start + 2].startswith("  probe 2 of 2 predicted in ")
    assert any("check-in 1 opened" in line for line in lines[start + 3 :])


def test_predictions_after_the_last_day_get_a_bar_whose_clock_runs():
    """The days' bar is full after the last day, and rich stops a finished task's clock:
    the predictions that follow (minutes on the embedded model) get a task of their own,
    advanced per probe and gone when the last one is in."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from loopsim.cli.stepping import ProbeBar

    progress = Progress(console=Console(file=io.StringIO()))
    days = progress.add_task("stepping", total=2)
    progress.advance(days, 2)
    bar = ProbeBar(progress)
    bar(0, 0)  # no probes: nothing to show
    assert len(progress.tasks) == 1
    bar(0, 3)
    predicting = progress.tasks[-1]
    assert (predicting.description, predicting.total, predicting.finished) == (
        "predicting",
        3,
        False,
    )
    assert predicting.elapsed is not None  # its clock is running
    bar(2, 3)
    assert predicting.completed == 2
    bar(3, 3)
    assert [t.description for t in progress.tasks] == ["stepping"]


def test_probe_list_says_which_day_proposed_a_probe_and_if_it_was_reverted(cli, open_checkin):
    run_id = open_checkin

    def probes(status):
        return json.loads(cli("probe", "list", run_id, "--status", status, "--json").stdout)

    (proposed,) = probes("proposed")
    assert (proposed["day"], proposed["day_status"]) == (1, "committed")
    (spec_probe,) = probes("accepted")
    assert (spec_probe["day"], spec_probe["day_status"]) == (None, None)
    assert "reverted" not in cli("probe", "list", run_id).stdout

    decided = cli("checkin", "decide", "1", "--reject")
    assert decided.exit_code == 0, decided.output
    (after,) = probes("proposed")
    assert (after["id"], after["day"], after["day_status"]) == (proposed["id"], 1, "reverted")
    listed = cli("probe", "list", run_id).stdout
    (row,) = [line for line in listed.splitlines() if line.split()[:1] == [str(after["id"])]]
    assert "1 (reverted)" in row

    accepted = cli("probe", "accept", str(after["id"]))
    assert accepted.exit_code == 0, accepted.output
    assert f"probe {after['id']} (day 1) came from days a check-in reverted" in accepted.stderr
    missing = cli("probe", "accept", "999")
    assert missing.exit_code == 1
    assert "no probe 999" in missing.stderr


def test_demo_refuses_a_report_path_before_it_creates_or_steps_anything(cli_factory, tmp_path):
    """The demo stepped its days (minutes on the embedded model), then failed to write
    the report, naming an option `-o` it does not have."""
    factory, model = scripted_factory()
    db = tmp_path / "demo.db"
    cli = cli_factory(str(db), factory)
    for report, says in [
        (tmp_path / "missing" / "r.md", "folder"),
        (tmp_path, "not a regular file"),
        (f"{tmp_path}/new/", "names a folder"),
    ]:
        result = cli("demo", "--days", "1", "--report", str(report))
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"error: --report {report}: ")
        assert says in line
    assert model.calls == []
    assert not db.exists()


def test_checkin_list_keeps_each_check_in_on_one_line_of_a_narrow_terminal(
    cli, open_checkin, monkeypatch
):
    """At 60 columns the run's whole id kept its width and every other column was cut to
    an ellipsis (`…`, `schedul…`, `1-…`); as `run list`, the id gives way to a prefix."""
    run_id = open_checkin
    monkeypatch.setenv("COLUMNS", "60")
    lines = cli("checkin", "list").stdout.splitlines()
    assert lines[0].split() == ["id", "run", "reason", "days", "decision", "drift"]
    assert lines[1].split() == ["1", run_id[:12], "scheduled", "1-2", "pending", "-"]
    assert all(len(line) <= 60 for line in lines)
    assert cli("checkin", "decide", "1", "--halt").exit_code == 0
    monkeypatch.delenv("COLUMNS")
    piped = cli("checkin", "list").stdout.splitlines()  # into a pipe: every value whole
    assert piped[1].split() == ["1", run_id, "scheduled", "1-2", "halt", piped[1].split()[-1]]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # json keeps the last of two equal keys: the first answer vanished without a word
        (
            '{"1": {"answer": "First.", "rating": 2}, "1": {"answer": "Second.", "rating": 3},'
            ' "2": {"answer": "B.", "rating": 3}, "3": {"answer": "C.", "rating": 3}}',
            "'1' is given twice",
        ),
        (
            '{"1": {"answer": "A.", "rating": 2, "evil": 1}, "2": {"answer": "B.", "rating": 3},'
            ' "3": {"answer": "C.", "rating": 3}}',
            "unknown field 'evil' (expected answer and rating)",
        ),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
    ],
    ids=["duplicate-key", "unknown-field", "deep"],
)
def test_an_answers_file_that_is_ambiguous_or_too_deep_is_refused(
    cli, three_probes, tmp_path, text, says
):
    run_id, checkin_id = three_probes
    path = tmp_path / "ans.json"
    path.write_text(text)
    refused = cli("checkin", "decide", str(checkin_id), "--approve", "--answers", str(path))
    assert refused.exit_code == 2, refused.output
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert says in line
    assert stored_pairs(cli) == [(7, None, None), (8, None, None), (9, None, None)]
    assert json.loads(cli("run", "show", run_id, "--json").stdout)["status"] == "awaiting_checkin"


def test_a_spec_nested_too_deeply_is_one_line(cli, tmp_path):
    text = SPEC + "\n[model]\nparams = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n"
    result = cli("run", "create", str(write_spec(tmp_path / "deep.toml", text)))
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("deep.toml: invalid TOML: nested too deeply")
