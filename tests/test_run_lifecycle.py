"""A run's beginning and end: its model id is checked when it is created, and a run
created by mistake can be deleted without touching any other run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from loopsim.testing import scripted_factory
from tests.conftest import write_spec
from tests.test_cli import GOOD_SPEC, digest, one_line_error

CHECKIN_SPEC = """
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
spot_check_probability = 0.0
every_days = 2
probes_per_checkin = 1
"""


@pytest.fixture
def cli(cli_factory, sqlite_url):
    factory, _ = scripted_factory()
    return cli_factory(sqlite_url, factory)


# ------------------------------------------------------------------ model ids


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("notaprovider:foo", "unknown provider 'notaprovider'"),
        ("llamacpp:gemma9-999b", "neither a model loopsim ships (llamacpp:gemma3-270m)"),
        ("llamacpp:/no/such/model.gguf", "nor an existing .gguf file"),
    ],
)
def test_run_create_refuses_a_model_id_no_provider_could_build(
    cli, sqlite_url, tmp_path, model, said
):
    spec = write_spec(tmp_path / "spec.toml", GOOD_SPEC + f'\n[model]\nname = "{model}"\n')
    before = digest(Path(sqlite_url))
    result = cli("run", "create", str(spec))
    assert result.exit_code == 2
    line = one_line_error(result)
    assert said in line
    assert f"{spec}: [model] name '{model}'" in line
    assert digest(Path(sqlite_url)) == before


def test_run_create_names_LOOPSIM_MODEL_when_the_setting_is_wrong(
    cli_factory, sqlite_url, tmp_path
):
    factory, _ = scripted_factory()
    cli = cli_factory(sqlite_url, factory, model="llamacpp:gemma9-999b")
    result = cli("run", "create", str(write_spec(tmp_path / "spec.toml", GOOD_SPEC)))
    assert result.exit_code == 2
    assert "LOOPSIM_MODEL 'llamacpp:gemma9-999b'" in one_line_error(result)
    assert cli("run", "list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize("model", ["openai:gpt-4o-mini", "anthropic:claude-x", "GGUF"])
def test_run_create_accepts_known_providers_and_gguf_files_without_building_them(
    cli, tmp_path, model
):
    if model == "GGUF":
        gguf = tmp_path / "tiny.gguf"
        gguf.write_bytes(b"GGUF not really")  # never loaded: only its existence is checked
        model = f"llamacpp:{gguf}"
    spec = write_spec(tmp_path / "spec.toml", GOOD_SPEC + f'\n[model]\nname = "{model}"\n')
    result = cli("run", "create", str(spec))
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(cli("run", "list", "--json").stdout)
    assert listed["model"] == model


# ------------------------------------------------------------------ run delete


def _counts(path: str, run_id: str) -> dict[str, int]:
    """How many rows of each table belong to the run."""
    with sqlite3.connect(path) as conn:
        one = {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            for table in ("days", "entries", "calls", "probes", "checkins")
        }
        runs = conn.execute("SELECT count(*) FROM runs WHERE id = ?", (run_id,))
        (one["runs"],) = runs.fetchone()
        (one["probe_pairs"],) = conn.execute(
            "SELECT count(*) FROM probe_pairs JOIN checkins ON checkins.id = checkin_id "
            "WHERE checkins.run_id = ?",
            (run_id,),
        ).fetchone()
    return one


def _two_runs_with_checkins(cli, tmp_path) -> tuple[str, str]:
    spec = write_spec(tmp_path / "spec.toml", CHECKIN_SPEC)
    ids = []
    for _ in range(2):
        made = cli("run", "create", str(spec))
        assert made.exit_code == 0, made.output
        ids.append(made.stdout.strip())
        assert cli("run", "step", ids[-1], "--days", "2").exit_code in (0, 3)
    return ids[0], ids[1]


def test_run_delete_refuses_committed_days_without_force_and_changes_nothing(
    cli, sqlite_url, tmp_path
):
    doomed, _ = _two_runs_with_checkins(cli, tmp_path)
    before = digest(Path(sqlite_url))
    result = cli("run", "delete", doomed)
    assert result.exit_code == 1
    line = one_line_error(result)
    assert "has 2 committed days" in line
    assert f"loopsim run delete {doomed} --force" in line
    assert digest(Path(sqlite_url)) == before


def test_run_delete_force_removes_only_that_runs_rows_and_the_other_still_verifies(
    cli, sqlite_url, tmp_path
):
    doomed, kept = _two_runs_with_checkins(cli, tmp_path)
    kept_before = _counts(sqlite_url, kept)
    doomed_before = _counts(sqlite_url, doomed)
    assert all(doomed_before.values()), doomed_before  # every kind of row is there to delete
    result = cli("run", "delete", doomed, "--force")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"deleted run {doomed}: 2 days, 4 entries"
    assert not any(_counts(sqlite_url, doomed).values())
    assert _counts(sqlite_url, kept) == kept_before
    verified = cli("record", "verify", kept)
    assert verified.exit_code == 0
    assert "4 entries" in verified.stdout
    assert cli("db", "check").exit_code == 0
    # The full-text index forgot the deleted rows and still finds the kept run's.
    with sqlite3.connect(sqlite_url) as conn:
        assert conn.execute("SELECT count(*) FROM entries_fts_docsize").fetchone()[0] == 4
        conn.execute("INSERT INTO entries_fts(entries_fts) VALUES ('integrity-check')")
    found = json.loads(cli("record", "search", kept, "observations", "--json").stdout)
    assert len(found) == 2
    assert [r["id"] for r in json.loads(cli("run", "list", "--json").stdout)] == [kept]
    gone = cli("run", "show", doomed)
    assert gone.exit_code == 1
    assert f"no run '{doomed}'" in one_line_error(gone)


def test_run_delete_of_a_run_with_no_days_needs_no_force(cli, tmp_path):
    made = cli("run", "create", str(write_spec(tmp_path / "spec.toml", GOOD_SPEC)))
    result = cli("run", "delete", made.stdout.strip())
    assert result.exit_code == 0, result.output
    assert "0 days, 0 entries" in result.stderr
    assert cli("run", "list", "--json").stdout.strip() == "[]"


def test_store_delete_run_on_every_backend_leaves_the_other_run_whole(any_db, spec):
    from loopsim.config import Settings
    from loopsim.loop import Loop
    from loopsim.record.store import Store
    from tests.conftest import make_run

    factory, _ = scripted_factory()
    doomed, kept = make_run(any_db, spec), make_run(any_db, spec)
    loop = Loop(any_db, Settings(), factory)
    for run_id in (doomed, kept):
        loop.run_days(run_id, 2)
    with any_db.write() as session:
        counts = Store(session).delete_run(doomed)
    assert (counts["runs"], counts["days"], counts["entries"]) == (1, 2, 4)
    with any_db.read() as session:
        store = Store(session)
        assert [r.id for r in store.list_runs()] == [kept]
        result = store.verify_chain(kept)
        assert result.ok
        assert result.checked == 4
        assert len(store.search(kept, "observations")) == 2


def test_a_run_completes_with_its_last_day_and_halt_leaves_it_completed(cli, tmp_path):
    """`run list` showed `running` for a run whose budget was spent, until another `run
    step`; `run halt` then turned the completed run into a halted one."""
    unchecked = GOOD_SPEC.replace("every_days = 1000", "every_days = 1000\nfinal = false")
    spec = write_spec(tmp_path / "s.toml", unchecked + "\n[budget]\ndays = 2\n")
    run_id = cli("run", "create", str(spec)).stdout.strip()
    stepped = cli("run", "step", run_id, "--days", "2")
    assert stepped.exit_code == 0, stepped.output
    assert stepped.stderr.splitlines()[-1] == "run is completed: day budget spent"
    shown = json.loads(cli("run", "show", run_id, "--json").stdout)
    assert (shown["status"], shown["status_reason"]) == ("completed", "day budget spent")
    halted = cli("run", "halt", run_id)
    assert halted.exit_code == 1
    assert one_line_error(halted) == f"error: run {run_id} is completed; cannot make it halted"
    assert json.loads(cli("run", "show", run_id, "--json").stdout)["status"] == "completed"


@pytest.mark.parametrize("name", ["bad\x1b[31mred\nline", "tab\there", "   ", "x" * 201])
def test_a_run_name_no_table_line_could_show_is_refused(cli, tmp_path, name):
    """A name with a line break split its `run list` row in two (and an escape code was
    stored as given): names are one line of 1 to 200 characters, for forks too."""
    spec = write_spec(tmp_path / "s.toml", GOOD_SPEC)
    created = cli("run", "create", str(spec), "--name", name)
    assert created.exit_code == 2, created.output
    line = one_line_error(created)
    assert line.startswith("error: run name '")
    assert line.endswith(": give 1 to 200 characters on one line, without control characters")
    assert cli("run", "list", "--json").stdout.strip() == "[]"
    parent = cli("run", "create", str(spec), "--name", "parent").stdout.strip()
    assert cli("run", "step", parent).exit_code == 0
    forked = cli("run", "fork", parent, "--at-day", "1", "--name", name)
    assert forked.exit_code == 2, forked.output
    assert "give 1 to 200 characters" in one_line_error(forked)
    assert [r["name"] for r in json.loads(cli("run", "list", "--json").stdout)] == ["parent"]
