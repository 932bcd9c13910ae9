"""`loopsim calls RUN`: every model call of a run's days in view, retries and the error
fed back included; probe predictions hidden until the blind answers are stored; judge
calls beside the day's; and `export --format jsonl --calls` (issue 16 item 4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage

from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.researcher.conversation import Logged
from loopsim.schemas import parse_spec
from loopsim.testing import add_day, amplified_reply, default_reply, scripted_factory
from loopsim.text import safe_text
from tests.conftest import SPEC, Cli, make_run
from tests.test_startup import heavy_imported

INVALID = "Today I would rather write prose than JSON."
PREDICTION = "Colonies follow the longest dances, so distance and nectar quality trade off."
CRITIC = "Judge it as a careful critic"


def babbling_spec() -> Any:
    data = json.loads(json.dumps(SPEC))
    data["babble"] = {"ideas": 1}
    return parse_spec(data)


def third_report_invalid() -> Any:
    """Each day babbles one idea for a critic; the third day's first report is prose, so
    loopsim feeds the validation error back and asks again."""
    reports: list[int] = []

    def reply(messages: list[BaseMessage]) -> str:
        if CRITIC not in messages[0].text:
            reports.append(1)
            if len(reports) == 3:
                return INVALID
        return amplified_reply(messages)

    return reply


def stepped(database: Database, url: str, days: int = 3) -> tuple[str, Any, Cli]:
    run_id = make_run(database, babbling_spec())
    factory, model = scripted_factory([third_report_invalid()])
    cli = Cli(url, factory)
    done = cli("run", "step", run_id, "--days", str(days))
    assert done.exit_code == 0, done.output
    return run_id, model, cli


def stored_calls(database: Database, run_id: str, index: int) -> list[Any]:
    with database.read() as session:
        store = Store(session)
        return list(store.day_calls(store.get_day(run_id, index).id))


def test_calls_of_day_3_show_every_call_with_its_messages_and_the_error_fed_back(any_db, any_url):
    run_id, _model, cli = stepped(any_db, any_url)
    calls = stored_calls(any_db, run_id, 3)
    # The report twice (prose, then valid) and the critic of its one idea.
    assert [(c.role, c.attempt, c.accepted) for c in calls] == [
        ("day", 1, False),
        ("day", 2, True),
        ("critic", 1, True),
    ]
    done = cli("calls", run_id, "--day", "3")
    assert done.exit_code == 0, done.output
    out = done.stdout
    for call in calls:
        assert f"call {call.ordinal}  {call.role}" in out
        for message in call.messages:  # every line of every message, as sent
            for line in safe_text(message["content"]).splitlines():
                assert line.strip() in out
    rejected = calls[0]
    assert INVALID in out
    assert f"error, fed back to attempt 2\n    {rejected.error}" in out
    # The retry carries the error as the model saw it.
    assert f"That reply was not valid: {rejected.error}" in calls[1].messages[-1]["content"]
    assert "day 2  " not in out
    assert "day 1  " not in out


def test_calls_json_is_exactly_what_the_model_was_sent_and_replied(database, sqlite_url):
    run_id, model, cli = stepped(database, sqlite_url)
    done = cli("calls", run_id, "--day", "3", "--json")
    assert done.exit_code == 0, done.output
    records = json.loads(done.stdout)
    sent = model.calls[-3:]  # day 3 made the last three calls
    assert [[m["content"] for m in r["messages"]] for r in records] == [
        [m.text for m in messages] for messages in sent
    ]
    assert next(r["reply"] for r in records) == INVALID
    assert [(r["role"], r["attempt"], r["accepted"], r["fed_back"]) for r in records] == [
        ("day", 1, False, True),
        ("day", 2, True, False),
        ("critic", 1, True, False),
    ]
    calls = stored_calls(database, run_id, 3)
    assert [r["error"] for r in records] == [c.error for c in calls]
    assert [r["tokens_in"] for r in records] == [c.tokens_in for c in calls]
    assert [r["latency_ms"] for r in records] == [c.latency_ms for c in calls]
    # The accepted critique names the entry it became.
    with database.read() as session:
        kinds = {e.seq: e.kind for e, _, _ in Store(session).list_entries(run_id, day_index=3)}
    assert kinds[records[2]["entry_seq"]] == "critique"

    everything = json.loads(cli("calls", run_id, "--json").stdout)
    assert [r["day_index"] for r in everything] == [1, 1, 2, 2, 3, 3, 3]
    latest = json.loads(cli("calls", run_id, "--json", "--limit", "2").stdout)
    assert latest == everything[-2:]
    critics = json.loads(cli("calls", run_id, "--json", "--role", "critic").stdout)
    assert [r["day_index"] for r in critics] == [1, 2, 3]
    assert {r["role"] for r in critics} == {"critic"}


def test_an_unknown_run_or_day_is_one_line_and_a_non_zero_exit(database, sqlite_url):
    run_id, _, cli = stepped(database, sqlite_url, days=1)
    for args, says in (
        (["calls", "nosuchrun"], "nosuchrun"),
        (["calls", run_id, "--day", "9"], "no day 9"),
        (["calls", run_id, "--role", "oracle"], "--role"),
    ):
        done = cli(*args)
        assert done.exit_code != 0
        assert says in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.output


def test_calls_read_through_a_pipe_that_closes_early_exit_0_and_import_no_model(
    database, sqlite_url
):
    run_id = make_run(database, babbling_spec())
    # A day whose calls hold far more text than a pipe buffers (64 KiB), so the reader
    # really does close the pipe while loopsim is still writing.
    view = "\n".join(f"#{n} note: the foragers of hive {n} were counted." for n in range(4000))
    calls = [
        Logged(
            n, "critic", 1, 1, [{"role": "user", "content": view}], "{}", True, None, "m", 1, 1, 1
        )
        for n in range(1, 5)
    ]
    with database.write() as session:
        store = Store(session)
        store.add_calls(add_day(store, run_id, 1), calls, [])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    loopsim = f"{sys.executable} -m loopsim --db {sqlite_url}"
    command = f"set -o pipefail; {loopsim} calls {run_id} | head -3"
    done = subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("day 1  2025-06-02  call 1  critic")
    assert len(done.stdout.splitlines()) == 3
    assert done.stderr == ""
    shown, found = heavy_imported(["-m", "loopsim", "--db", sqlite_url, "calls", run_id])
    assert shown.returncode == 0
    assert len(shown.stdout) > 4 * len(view)
    assert found == []


def predicting_with_judge(messages: list[BaseMessage]) -> str:
    if "You compare two answers" in messages[0].text:
        return '{"rating": 2, "reason": "Mostly a different view."}'
    if "Question:" in messages[-1].text:
        return PREDICTION
    return default_reply(messages)


def test_predictions_stay_hidden_until_the_blind_answers_and_judges_show_after(
    any_db, any_url, tmp_path
):
    data = json.loads(json.dumps(SPEC))
    data["checkins"] = {
        "every_days": 3,
        "spot_check_probability": 0.0,
        "probes_per_checkin": 2,
        "judge": "run",
    }
    data["probes"] = ["What decides where a colony forages?", "What would you measure first?"]
    run_id = make_run(any_db, parse_spec(data))
    factory, _ = scripted_factory([predicting_with_judge])
    cli = Cli(any_url, factory)
    assert cli("run", "step", run_id, "--days", "3").exit_code == 3  # at the check-in

    for args in (["--json"], [], ["--role", "probe"]):
        done = cli("calls", run_id, "--day", "3", *args)
        assert done.exit_code == 0, done.output
        assert PREDICTION not in done.stdout
    records = json.loads(cli("calls", run_id, "--day", "3", "--json").stdout)
    probes = [r for r in records if r["role"] == "probe"]
    assert len(probes) == 2
    assert all(r["hidden"] and r["reply"] is None for r in probes)
    exported = cli("export", run_id, "--format", "jsonl", "--calls").stdout
    assert PREDICTION not in exported

    answers = tmp_path / "answers.json"
    answers.write_text(
        json.dumps({"1": {"answer": "Distance, mostly."}, "2": {"answer": "Dance timing."}})
    )
    done = cli("checkin", "decide", "1", "--approve", "--answers", str(answers))
    assert done.exit_code == 0, done.output

    records = json.loads(cli("calls", run_id, "--day", "3", "--json").stdout)
    probes = [r for r in records if r["role"] == "probe"]
    assert [r["reply"] for r in probes] == [PREDICTION, PREDICTION]
    judges = [r for r in records if r["role"] == "judge"]
    with any_db.read() as session:
        store = Store(session)
        pairs = store.pairs(store.list_checkins(run_id)[0].id)
        kept = [(p.id, p.probe_id, p.judge_calls) for p, _ in pairs]
    assert [(r["checkin_id"], r["probe_id"]) for r in judges] == [(1, pid) for _, pid, _ in kept]
    assert [r["reply"] for r in judges] == [c[0]["reply"] for _, _, c in kept]
    assert [r["messages"] for r in judges] == [c[0]["messages"] for _, _, c in kept]
    assert records[-len(judges) :] == judges  # after the day's own calls
    text = cli("calls", run_id, "--day", "3", "--role", "judge").stdout
    assert "judge of check-in 1" in text
    assert "Mostly a different view." in text


def test_export_jsonl_calls_adds_call_lines_and_leaves_the_rest_as_it_was(database, sqlite_url):
    run_id, _, cli = stepped(database, sqlite_url)
    plain = cli("export", run_id, "--format", "jsonl").stdout.splitlines()
    with_calls = cli("export", run_id, "--format", "jsonl", "--calls").stdout.splitlines()
    assert with_calls[: len(plain)] == plain
    added = [json.loads(line) for line in with_calls[len(plain) :]]
    listed = json.loads(cli("calls", run_id, "--json").stdout)
    assert {(r["schema"], r["type"]) for r in added} == {("loopsim.export/1", "call")}
    assert [{k: v for k, v in r.items() if k not in ("schema", "type")} for r in added] == listed
    assert len(added) == 7

    refused = cli("export", run_id, "--format", "md", "--calls")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == "error: --calls: only for --format jsonl"


def test_a_failed_try_of_a_day_shows_before_the_day_that_took_its_index(database, sqlite_url):
    """A failed try shares its day's index; its calls come first, not interleaved with
    the calls of the try that committed."""
    run_id = make_run(database, babbling_spec())
    factory, _ = scripted_factory([ConnectionError("connection refused"), amplified_reply])
    cli = Cli(sqlite_url, factory)
    assert cli("run", "step", run_id).exit_code == 1
    assert cli("run", "step", run_id).exit_code == 0
    shown = cli("calls", run_id, "--day", "1", "--json")
    assert shown.exit_code == 0, shown.output
    rows = [(c["day_status"], c["ordinal"], c["accepted"]) for c in json.loads(shown.stdout)]
    assert rows[0] == ("failed", 1, False)
    assert {status for status, _, _ in rows[1:]} == {"committed"}
    assert [ordinal for _, ordinal, _ in rows[1:]] == list(range(1, len(rows)))
