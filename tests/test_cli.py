"""The CLI as a user drives it: real Typer app, real SQLite, scripted model at the seam."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

import loopsim
from loopsim.cli import app
from loopsim.testing import report_json, scripted_factory
from tests.conftest import write_spec

GOOD_SPEC = """
[persona]
name = "Dr. Test"
background = "Studies bees."

[charter]
agenda = "Find out how bees choose flowers."

[time]
policy = "fixed"
anchor = 2025-06-02

[checkins]
spot_check_probability = 0.0
every_days = 1000
"""


def digest(path: Path) -> str:
    parts = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    return hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()


@pytest.fixture
def cli(cli_factory, sqlite_url):
    factory, _ = scripted_factory()
    return cli_factory(sqlite_url, factory)


@pytest.fixture
def run_id(cli, tmp_path):
    result = cli("run", "create", str(write_spec(tmp_path / "spec.toml", GOOD_SPEC)))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def last_error(result) -> str:
    """After progress lines, the error is still exactly one line, and the last."""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "Traceback" not in result.output
    return last


def one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        # The field as the spec names it: not time.fixed.anchor (the union's tag).
        (("anchor = 2025-06-02", 'anchor = "2025-13-45"'), "time.anchor: input should be"),
        # A top-level key written under a table: TOML puts it in that table.
        (
            ("anchor = 2025-06-02", 'anchor = 2025-06-02\nprobes = ["Why?"]'),
            "time.probes: unknown field (probes is a top-level key: in TOML, write it above",
        ),
        (("anchor = 2025-06-02", "anchor = 2025-02-30"), "time.anchor: invalid TOML"),
        (('policy = "fixed"', 'policy = "weekly"'), "time.policy: unknown drift policy 'weekly'"),
        (('[persona]\nname = "Dr. Test"\nbackground = "Studies bees."\n', ""), "persona: missing"),
        (("[time]", "[time\n"), "invalid TOML"),
        # A typo'd required key is missing too; the typo is named first, with the fix.
        (('name = "Dr. Test"', 'nme = "Dr. Test"'), "persona.nme: unknown field (did you mean"),
        (("anchor = 2025", "anchr = 2025"), "time.anchr: unknown field (did you mean anchor?)"),
        (("every_days = 1000", "every_day = 1000"), "every_day: unknown field (did you mean"),
        (("every_days = 1000", "zzz = 1"), "checkins.zzz: unknown field"),
    ],
)
def test_bad_spec_is_one_line_exit_2_and_writes_nothing(cli, sqlite_url, tmp_path, edit, field):
    spec = write_spec(tmp_path / "bad.toml", GOOD_SPEC.replace(*edit))
    before = digest(Path(sqlite_url))
    result = cli("run", "create", str(spec))
    assert result.exit_code == 2
    assert field in one_line_error(result)
    assert digest(Path(sqlite_url)) == before
    assert cli("run", "list", "--json").stdout.strip() == "[]"


def test_missing_spec_file_is_named(cli, tmp_path):
    result = cli("run", "create", str(tmp_path / "nope.toml"))
    assert result.exit_code == 2
    assert "no such file" in one_line_error(result)


def test_missing_database_names_the_command_and_is_not_created(cli_factory, tmp_path):
    path = tmp_path / "typo.db"
    result = cli_factory(str(path))("run", "list")
    assert result.exit_code == 1
    assert "`loopsim db upgrade`" in one_line_error(result)
    assert not path.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_database_is_refused_and_left_untouched(cli_factory, sqlite_url, tmp_path, damage):
    path = Path(sqlite_url)
    if damage == "garbage":
        path.write_bytes(b"this is not sqlite at all" * 100)
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    before = path.read_bytes()
    result = cli_factory(str(path))("run", "list")
    assert result.exit_code == 1
    assert "not a readable loopsim database" in one_line_error(result)
    assert path.read_bytes() == before


def test_create_list_show_step_verify_export(cli, run_id, tmp_path):
    assert len(run_id) == 26
    listed = json.loads(cli("run", "list", "--json").stdout)
    assert [r["id"] for r in listed] == [run_id]
    assert listed[0]["status"] == "created"

    stepped = cli("run", "step", run_id[:8], "--days", "2")
    assert stepped.exit_code == 0, stepped.output
    assert "day 2  2025-06-02  committed  2 entries" in stepped.stderr

    shown = json.loads(cli("run", "show", run_id, "--json").stdout)
    assert shown["days_committed"] == 2
    assert shown["next_day"] == 3
    assert shown["status"] == "running"
    assert shown["spec"]["persona"]["name"] == "Dr. Test"

    verified = cli("record", "verify", run_id)
    assert verified.exit_code == 0
    assert "ok: run" in verified.stdout
    assert "4 entries" in verified.stdout

    record = cli("record", "show", run_id, "--day", "2").stdout
    assert record.startswith("day 2  2025-06-02\n")  # no blank line on top
    assert "day 1" not in record
    whole = cli("record", "show", run_id).stdout
    assert whole.startswith("day 1  ")
    assert "\n\nday 2  " in whole  # days stand apart

    md = cli("export", run_id, "--format", "md").stdout
    assert "## Day 1: 2025-06-02" in md
    assert "## Day 2: 2025-06-02" in md
    assert len(re.findall(r"### #\d+ note: Observations for 2025", md)) == 2

    out = tmp_path / "log.jsonl"
    exported = cli("export", run_id, "-f", "jsonl", "-o", str(out))
    assert exported.exit_code == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == ["run", "day", "entry", "entry", "day", "entry", "entry"]
    assert {r["schema"] for r in records} == {"loopsim.export/1"}


def test_verify_names_the_entry_edited_by_hand(cli, run_id, sqlite_url):
    cli("run", "step", run_id, "--days", "2")
    import sqlite3

    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("UPDATE entries SET body = 'rewritten history' WHERE seq = 3")
    result = cli("record", "verify", run_id)
    assert result.exit_code == 1
    assert "day 2, seq 3" in one_line_error(result)


def test_failed_days_exit_non_zero_then_fail_the_run_and_resume_continues(
    cli_factory, sqlite_url, run_id
):
    bad, _ = scripted_factory(['{"entries": []}'])
    cli = cli_factory(sqlite_url, bad, max_failed_days=2)
    result = cli("run", "step", run_id, "--days", "3")
    assert result.exit_code == 1
    assert "run step" in last_error(result)
    result = cli("run", "step", run_id, "--days", "3")
    assert result.exit_code == 1
    assert "run resume" in last_error(result)
    # Only failed days so far: record show lists them, from its first line.
    shown = cli("record", "show", run_id).stdout
    assert shown.startswith("day 1  failed after "), shown
    good, _ = scripted_factory()
    cli = cli_factory(sqlite_url, good)
    assert cli("run", "step", run_id).exit_code == 1  # failed: refused
    assert cli("run", "resume", run_id).exit_code == 0
    assert cli("run", "step", run_id).exit_code == 0
    days = json.loads(cli("run", "show", run_id, "--json").stdout)
    # The two failed tries were tries of day 1, which the good day then took.
    assert (days["days_failed"], days["days_committed"], days["next_day"]) == (2, 1, 2)


def test_resume_starts_the_failed_day_streak_afresh(cli_factory, sqlite_url, run_id):
    """Issue 19: after `run resume`, one failed day failed the run again ("2 failed days
    in a row"), because the streak counted the failed days from before the resume."""
    bad, _ = scripted_factory(['{"entries": []}'])
    cli = cli_factory(sqlite_url, bad, max_failed_days=2)

    def show() -> dict[str, Any]:
        return dict(json.loads(cli("run", "show", run_id, "--json").stdout))

    cli("run", "step", run_id)
    cli("run", "step", run_id)
    assert show()["status"] == "failed"
    assert cli("run", "resume", run_id).exit_code == 0
    assert cli("run", "step", run_id).exit_code == 1  # one failed day
    info = show()
    assert (info["status"], info["days_failed"]) == ("running", 3), info["status_reason"]
    cli("run", "step", run_id)  # a second one in a row since the resume
    info = show()
    assert info["status"] == "failed"
    assert info["status_reason"].startswith("2 failed days in a row; day 1:")


def test_record_show_strips_terminal_escapes(cli_factory, sqlite_url, run_id):
    # Escapes inside titles of a *valid* reply are refused by validation, so plant one
    # in the record directly, as a hostile writer with database access could.
    factory, _ = scripted_factory([report_json(("note", "Plain title", "A plain enough body."))])
    cli = cli_factory(sqlite_url, factory)
    cli("run", "step", run_id)
    import sqlite3

    with sqlite3.connect(sqlite_url) as conn:
        conn.execute("UPDATE entries SET body = 'clear \x1b[2J\x1b]0;pwned\x07 screen'")
    out = cli("record", "show", run_id).stdout
    assert "\x1b" not in out
    assert "\x07" not in out
    assert "clear  screen" in out


def test_bad_flags_are_usage_errors(cli, run_id):
    assert cli("run", "step", run_id, "--days", "0").exit_code == 2
    assert cli("export", run_id, "--format", "pdf").exit_code == 2
    missing = cli("run", "show", "zzzzzzzz")
    assert missing.exit_code == 1
    assert "no run 'zzzzzzzz'" in one_line_error(missing)


def test_export_to_a_missing_folder_writes_nothing(cli, run_id, tmp_path):
    result = cli("export", run_id, "-o", str(tmp_path / "no" / "such" / "log.md"))
    assert result.exit_code == 2
    assert "does not exist" in one_line_error(result)


@pytest.mark.parametrize("given", ["out/new/", "out/", "missing/dir/", "out/new" + "/" * 2])
def test_export_to_a_path_naming_a_folder_writes_nothing(cli, run_id, tmp_path, given):
    """`-o out/new/` wrote a file `out/new`: the option was a Path, which drops the
    trailing slash that says the path names a folder."""
    (tmp_path / "out").mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = cli("export", run_id, "-o", f"{tmp_path}/{given}")
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert line.startswith(f"error: -o {tmp_path}/{given}: names a folder"), line
    assert sorted(tmp_path.rglob("*")) == before


def test_bad_environment_setting_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("LOOPSIM_VIEW_TOKEN_BUDGET", "lots")
    result = CliRunner().invoke(app, ["--db", str(tmp_path / "x.db"), "run", "list"])
    assert result.exit_code == 2
    assert "LOOPSIM_VIEW_TOKEN_BUDGET" in one_line_error(result)


def test_console_script_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopsim",
            "--db",
            str(tmp_path / "none.db"),
            "record",
            "verify",
            "abcd",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: no database at {tmp_path / 'none.db'}; create it with `loopsim db upgrade`"
    )


def test_cli_reference_is_current():
    from loopsim.cli.doc import render

    committed = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    assert committed == render(), "docs/cli.md is stale: run `make docs`"


def test_public_api_is_sorted_and_importable():
    assert loopsim.__all__ == sorted(loopsim.__all__)
    for name in loopsim.__all__:
        assert getattr(loopsim, name) is not None


def test_downgrade_refuses_until_upgrade_then_data_is_intact(cli, run_id, sqlite_url):
    down = cli("db", "downgrade", "0001")
    assert down.exit_code == 0
    assert "backup:" in down.stderr
    refused = cli("run", "show", run_id)
    assert refused.exit_code == 1
    assert "`loopsim db upgrade`" in one_line_error(refused)
    # db status shows the schema it found, on stdout, and what to do; exit 1 all the same
    status = cli("db", "status")
    assert status.exit_code == 1
    assert "is at schema 0001, behind " in status.stdout
    assert "`loopsim db upgrade`" in status.stdout
    assert "error" not in status.stderr
    assert cli("db", "upgrade").exit_code == 0
    assert "(current)" in cli("db", "status").stdout
    assert json.loads(cli("run", "show", run_id, "--json").stdout)["id"] == run_id
    assert cli("db", "downgrade", "nonsense").exit_code == 2


def test_run_list_never_truncates_ids(cli, run_id):
    assert run_id in cli("run", "list").stdout


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["run", "list", "--db", "x.db"],
            "error: --db goes before the command: `loopsim --db x.db run list`",
        ),
        (
            ["run", "show", "RUNID", "--db=x.db", "--json"],
            "error: --db goes before the command: `loopsim --db=x.db run show RUNID --json`",
        ),
        (["run", "step", "RUNID", "--days", "zero"], "error: --days: give a whole number"),
        (["run", "step", "RUNID", "--days", "0"], "error: --days: give 1 or more"),
        (
            ["export", "RUNID", "--format", "pdf"],
            "error: --format: 'pdf' is not one of 'md', 'jsonl', 'html', 'dataset'",
        ),
        (
            ["run", "step", "--dayz", "2", "RUNID"],
            "error: loopsim run step has no option --dayz (did you mean --days?); "
            "`loopsim run step --help` shows how to use it",
        ),
        (
            ["run", "step"],
            "error: loopsim run step needs RUN; `loopsim run step --help` shows how to use it",
        ),
        (
            ["run", "lisst"],
            "error: no such command 'lisst' (did you mean 'list'?); "
            "`loopsim run --help` shows how to use it",
        ),
        (
            ["--bogus", "run", "list"],
            "error: loopsim has no option --bogus; `loopsim --help` shows how to use it",
        ),
    ],
)
def test_usage_errors_are_one_line_in_loopsims_words(cli, args, line):
    result = cli(*args)
    assert result.exit_code == 2
    assert one_line_error(result) == line


@pytest.fixture
def big_record(sqlite_url, spec):
    """A run whose record is far larger than a pipe's buffer, so a reader that stops
    after one line always closes the pipe while loopsim is still writing."""
    from loopsim.record import db as dbmod
    from loopsim.record.store import EntryInput, Store
    from loopsim.testing import add_day
    from tests.conftest import make_run

    database = dbmod.Database.open(sqlite_url)
    run_id = make_run(database, spec)
    body = "Observations of nectar foragers at the hive entrance. " * 400
    with database.write() as session:
        store = Store(session)
        for index in range(1, 9):
            add_day(store, run_id, index, [EntryInput("note", f"Day {index}", body)] * 3)
    database.dispose()
    return sqlite_url, run_id


@pytest.mark.parametrize(
    "command",
    [
        ["record", "show", "RUN"],
        ["record", "search", "RUN", "nectar"],
        ["export", "RUN", "-f", "jsonl"],
        ["run", "show", "RUN", "--json"],
    ],
)
def test_a_pipe_closed_after_one_line_exits_0_without_a_word(big_record, command):
    url, run_id = big_record
    argv = [
        sys.executable,
        "-m",
        "loopsim",
        "--db",
        url,
        *[run_id if a == "RUN" else a for a in command],
    ]
    script = f"{subprocess.list2cmdline(argv)} | head -1"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 1


def test_run_list_fits_80_columns_with_each_run_on_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    spec = write_spec(tmp_path / "alignment-theorist-of-bees.toml", GOOD_SPEC)
    run_ids = [cli("run", "create", str(spec)).stdout.strip() for _ in range(2)]
    lines = cli("run", "list").stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert len(lines) == 3, lines  # the header and one line per run: nothing folded
    for run_id, line in zip(run_ids, lines[1:], strict=True):
        assert line.startswith(run_id), line
        assert "llamacpp:gemma3-270m" in line, line
        assert "created" in line
        assert "…" in line


def test_one_entry_reads_as_one_entry(cli_factory, sqlite_url, run_id):
    factory, _ = scripted_factory([report_json(("note", "One note", "A single entry today."))])
    cli = cli_factory(sqlite_url, factory)
    stepped = cli("run", "step", run_id)
    assert stepped.exit_code == 0, stepped.output
    assert "committed  1 entry  " in stepped.stderr
    assert "1 entries" not in stepped.stderr
    verified = cli("record", "verify", run_id).stdout
    assert f"ok: run {run_id}, 1 entry, head" in verified


def test_asking_for_the_status_a_run_has_already_changes_nothing(cli, run_id):
    """`run pause` twice, or `run resume` of a running run, is done already: exit 0 and
    say so, as a script retrying the command expects; a move the run cannot make is
    still refused."""
    assert cli("run", "pause", run_id).exit_code == 0
    again = cli("run", "pause", run_id)
    assert again.exit_code == 0, again.output
    assert f"run {run_id} is already paused" in again.stderr
    assert cli("run", "resume", run_id).exit_code == 0
    again = cli("run", "resume", run_id)
    assert again.exit_code == 0, again.output
    assert "already running" in again.stderr
    assert cli("run", "halt", run_id).exit_code == 0
    refused = cli("run", "resume", run_id)
    assert refused.exit_code == 1
    assert "is halted; cannot make it running" in last_error(refused)


def test_upgrading_an_empty_file_says_it_was_created(cli_factory, tmp_path):
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    result = cli_factory(str(path))("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"created {path} at schema "), result.stderr
    assert "None" not in result.stderr


@pytest.mark.parametrize("columns", [None, "80"])
def test_run_list_of_no_runs_says_so_and_wide_names_stay_whole_in_a_pipe(
    cli, tmp_path, monkeypatch, columns
):
    """A fresh database's `run list` (a traceback once, from the column fitting), and a
    name of CJK characters, two terminal cells each: whole into a pipe, cut to fit 80."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    empty = cli("run", "list")
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.startswith("no runs yet")
    name = "蜜蜂の採餌研究プロジェクト第二期の記録"
    spec = write_spec(tmp_path / "spec.toml", GOOD_SPEC)
    run_id = cli("run", "create", str(spec), "--name", name).stdout.strip()
    (line,) = cli("run", "list").stdout.splitlines()[1:]
    assert line.startswith(run_id)
    if columns is None:
        assert name in line
    else:
        assert cell_len(line.rstrip()) <= 80, line
        assert name[:4] in line
        assert "…" in line


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("every_days = 1000", "every_days = true"), "checkins.every_days: input should be"),
        (("every_days = 1000", 'every_days = "3"'), "checkins.every_days: input should be"),
        (
            ("spot_check_probability = 0.0", "spot_check_probability = false"),
            "checkins.spot_check_probability: input should be",
        ),
    ],
)
def test_a_spec_number_given_as_a_boolean_or_text_is_refused(cli, tmp_path, edit, field):
    """Pydantic's lax mode read `every_days = true` as 1 (and "3" as 3): a run checked
    in every day where its author had written something else entirely."""
    spec = write_spec(tmp_path / "bad.toml", GOOD_SPEC.replace(*edit))
    result = cli("run", "create", str(spec))
    assert result.exit_code == 2
    assert field in one_line_error(result)
    fine = write_spec(tmp_path / "int.toml", GOOD_SPEC.replace("= 0.0", "= 0"))
    assert cli("run", "create", str(fine)).exit_code == 0  # an integer for a float is fine
