"""``loopsim run compare``: two runs side by side from their common prefix, with the
divergence of their records day by day. Real SQLite and PostgreSQL; the scripted model, or
an OpenAI-compatible server on 127.0.0.1, at the network seam."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from loopsim.record.store import Store
from loopsim.schemas import parse_spec
from loopsim.testing import report_json, scripted_factory
from loopsim.testing.stubserver import StubOpenAI, conditioned_text
from tests.conftest import SPEC, write_spec

NOISY = "You work in a noisy, underfunded lab with a grant report due on Friday."


def _words(text: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    return " ".join(f"word{c}{d}" for c, d in zip(digest[:12:2], digest[1:12:2], strict=True))


def thoughtful(messages: list[BaseMessage]) -> str:
    """A valid day whose words depend on the whole prompt: equal prompts, equal days."""
    words = _words("".join(m.text for m in messages))
    return report_json(
        ("note", f"Reading notes {words[:12]}", f"I read the log again and noted {words} today."),
        ("question", "What to measure next", "Which measurement would separate the ideas?"),
    )


@pytest.fixture
def cli(cli_factory, any_url):
    factory, _ = scripted_factory([thoughtful])
    return cli_factory(any_url, factory, embeddings="lexical")


def created(cli, spec: dict[str, Any], name: str = "parent", model: str = "scripted:test") -> str:
    with cli_db(cli) as session:
        return Store(session).create_run(parse_spec(spec), name=name, model=model).id


class cli_db:
    """A write transaction on the CLI's database, for setting up runs."""

    def __init__(self, cli) -> None:
        from loopsim.record import db as dbmod

        self.database = dbmod.Database.open(cli.url)

    def __enter__(self):
        self._cm = self.database.write()
        return self._cm.__enter__()

    def __exit__(self, *exc):
        try:
            return self._cm.__exit__(*exc)
        finally:
            self.database.dispose()


def ok(cli, *args: str) -> Any:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result


def fork(cli, run_id: str, day: int, overrides: Path | None = None) -> str:
    extra = [str(overrides)] if overrides else []
    return ok(cli, "run", "fork", run_id, "--at-day", str(day), *extra).stdout.strip()


def compared(cli, a: str, b: str) -> dict[str, Any]:
    return json.loads(ok(cli, "run", "compare", a, b, "--json").stdout)


def divergences(doc: dict[str, Any]) -> dict[int, float | None]:
    return {row["index"]: row["divergence"] for row in doc["days"]}


def test_two_forks_with_different_conditionals_diverge_after_their_common_prefix(cli, tmp_path):
    parent = created(cli, {**SPEC, "budget": {"days": 10}})
    ok(cli, "run", "step", parent, "--days", "3")
    noisy = write_spec(tmp_path / "noisy.toml", f'[conditional]\nframing = "{NOISY}"\n')
    a = fork(cli, parent, 2, noisy)
    b = fork(cli, parent, 2)
    c = fork(cli, parent, 2)
    for run in (a, b, c):
        ok(cli, "run", "step", run, "--days", "2")

    doc = compared(cli, a, b)
    assert doc["prefix"]["ancestor"] == parent
    assert doc["prefix"]["days"] == 2
    assert doc["prefix"]["external_date"] == "2025-06-02"
    assert f"both are forks of run {parent}" in doc["prefix"]["relation"]
    assert doc["spec_differs"] == ["conditional"]
    assert doc["similarity"] == "lexical"
    per_day = divergences(doc)
    assert sorted(per_day) == [3, 4]  # the shared days 1-2 are not compared
    assert all(value is not None and value > 0 for value in per_day.values()), per_day
    assert [row["a"]["status"] for row in doc["days"]] == ["committed", "committed"]
    assert doc["days"][0]["a"]["titles"] != doc["days"][0]["b"]["titles"]

    # Two forks under the same spec write the same days: their records do not diverge.
    same = compared(cli, b, c)
    assert divergences(same) == {3: 0.0, 4: 0.0}
    assert same["mean_divergence"] == 0.0
    assert same["spec_differs"] == []

    # A fork against its own parent: the parent's day 3 is the same-spec fork's day 3.
    with_parent = compared(cli, parent, b)
    assert with_parent["prefix"]["relation"] == "B descends from A, forked at day 2"
    assert divergences(with_parent) == {3: 0.0, 4: None}  # the parent has no day 4

    text = ok(cli, "run", "compare", a, b).stdout
    assert f"A  {a}  " in text
    assert ", last day 4)" in text  # an index, not a count: "4 days" misread as one
    assert "common prefix: days 1-2 (2025-06-02)" in text
    assert "mean divergence:" in text
    assert "spec differs in: conditional" in text


def test_a_fork_of_a_fork_shares_the_smaller_prefix_and_unrelated_runs_share_none(cli):
    parent = created(cli, {**SPEC, "budget": {"days": 10}})
    ok(cli, "run", "step", parent, "--days", "3")
    child = fork(cli, parent, 3)
    ok(cli, "run", "step", child, "--days", "1")
    grandchild = fork(cli, child, 4)
    sibling = fork(cli, parent, 2)
    ok(cli, "run", "step", sibling, "--days", "1")

    doc = compared(cli, grandchild, sibling)
    assert (doc["prefix"]["ancestor"], doc["prefix"]["days"]) == (parent, 2)
    assert "both descend from run" in doc["prefix"]["relation"]
    assert sorted(divergences(doc)) == [3, 4]

    deep = compared(cli, child, grandchild)
    assert (deep["prefix"]["ancestor"], deep["prefix"]["days"]) == (child, 4)

    other = created(cli, {**SPEC, "budget": {"days": 10}}, name="other")
    ok(cli, "run", "step", other, "--days", "1")
    apart = compared(cli, parent, other)
    assert apart["prefix"] == {
        "ancestor": None,
        "days": 0,
        "relation": "unrelated runs: no common prefix",
        "external_date": None,
    }
    assert sorted(divergences(apart)) == [1, 2, 3]
    assert apart["days"][1]["b"] is None
    assert apart["days"][1]["divergence"] is None
    text = ok(cli, "run", "compare", parent, other).stdout
    assert "common prefix: none" in text
    assert "no common prefix" in text


def test_a_day_without_divergence_says_why(cli):
    """A day one fork's check-in reverted showed a bare "-" for its divergence, as a day
    the other fork had not reached did, with nothing to tell the two apart."""
    spec = {
        **SPEC,
        "budget": {"days": 10},
        "checkins": {"every_days": 2, "spot_check_probability": 0.0},
    }
    parent = created(cli, spec)
    assert cli("run", "step", parent, "--days", "2").exit_code == 3  # at its check-in
    ok(cli, "checkin", "decide", "1", "--approve", "--skip-probes")
    a, b = fork(cli, parent, 2), fork(cli, parent, 2)
    for run in (a, b):
        assert cli("run", "step", run, "--days", "2").exit_code == 3  # at its own
    pending = json.loads(ok(cli, "checkin", "list", "--pending", "--json").stdout)
    ids = {row["run_id"]: row["id"] for row in pending}
    ok(cli, "checkin", "decide", str(ids[a]), "--reject")  # A's days after 2 are reverted
    ok(cli, "checkin", "decide", str(ids[b]), "--approve", "--skip-probes")
    assert "day 5" in ok(cli, "run", "step", b, "--days", "1").stderr

    doc = compared(cli, a, b)
    why = {}
    for row in doc["days"]:
        assert row["b"]["status"] == "committed"
        assert row["divergence"] is None
        why[row["index"]] = "A not reached" if row["a"] is None else f"A {row['a']['status']}"
    assert why == {3: "A reverted", 4: "A reverted", 5: "A not reached"}
    assert {row["index"]: row["no_divergence"] for row in doc["days"]} == why

    shown = {
        int(cells[0]): cells[-1]
        for line in ok(cli, "run", "compare", a, b).stdout.splitlines()
        if (cells := [c.strip() for c in line.strip("│").split("│")])[0].isdigit()
    }
    assert shown == why
    swapped = ok(cli, "run", "compare", b, a).stdout
    assert "B reverted" in swapped
    assert "B not reached" in swapped
    # The HTML report's comparison with the parent (A), which has no day after 2.
    page = ok(cli, "export", a, "--format", "html", "--compare-parent").stdout
    assert page.count("A not reached, B reverted") == 2


def test_compare_of_an_unknown_run_is_one_line(cli):
    parent = created(cli, SPEC)
    result = cli("run", "compare", parent, "zzzzzzzz")
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_compare_of_two_forks_stepped_against_an_openai_compatible_server(
    cli_factory, sqlite_url, tmp_path
):
    with StubOpenAI(reply=conditioned_text) as stub:
        cli = cli_factory(sqlite_url, None, model_base_url=stub.base_url, embeddings="lexical")
        parent = created(cli, {**SPEC, "budget": {"days": 10}}, model="openai:stub-model")
        ok(cli, "run", "step", parent, "--days", "2")
        noisy = write_spec(tmp_path / "noisy.toml", f'[conditional]\nframing = "{NOISY}"\n')
        a = fork(cli, parent, 1, noisy)
        b = fork(cli, parent, 1)
        for run in (a, b):
            ok(cli, "run", "step", run, "--days", "3")
        assert len(stub.requests) == 2 + 3 + 3
    doc = compared(cli, a, b)
    assert doc["prefix"]["days"] == 1
    per_day = divergences(doc)
    assert sorted(per_day) == [2, 3, 4]
    assert all(value is not None and value > 0 for value in per_day.values()), per_day
    # The same-spec fork's day 2 is its parent's.
    assert divergences(compared(cli, parent, b))[2] == 0.0


def test_checkin_drift_and_shared_probe_predictions_side_by_side_stay_blind(any_url, cli_factory):
    import loopsim
    from loopsim.config import Settings

    factory, _ = scripted_factory([thoughtful])
    spec = {
        **SPEC,
        "budget": {"days": 10},
        "probes": ["How far do foragers fly?"],
        "checkins": {"every_days": 2, "spot_check_probability": 0.0},
    }
    with loopsim.open(
        any_url, settings=Settings(embeddings="lexical"), chat_factory=factory
    ) as lab:
        parent = lab.create_run(spec, name="parent", model="s:1")
        lab.step(parent, days=2)
        (first,) = lab.checkins(parent)
        with cli_db_for(any_url) as session:
            pairs = Store(session).pairs(first.id)
            probe_id = pairs[0][1].id
            predicted = pairs[0][0].prediction
        lab.decide(first.id, "approve", answers={probe_id: {"answer": "About a kilometre."}})
        a = lab.fork(parent, 2, {"conditional": {"framing": NOISY}})
        b = lab.fork(parent, 2)
        for run in (a, b):
            lab.step(run, days=2)  # stops at each fork's own check-in
        result = lab.compare(a, b).to_dict()
    # The schedule may shorten the interval after an approval; the fork's own check-in
    # comes after the prefix, wherever it falls.
    own = result["checkins_a"][1]["last_day"]
    assert own > 2
    assert [(c["last_day"], c["in_prefix"], c["decision"]) for c in result["checkins_a"]] == [
        (2, True, "approve"),
        (own, False, None),
    ]
    assert result["checkins_a"][0]["drift_score"] is not None
    shared = {row["question"]: row for row in result["probes"]}
    row = shared["How far do foragers fly?"]
    for side in (row["a"], row["b"]):
        # The copied check-in's prediction was answered blind and shows; the fork's own
        # new prediction stays hidden until its human answer is stored.
        assert [(p["last_day"], p["prediction"], p["hidden"]) for p in side] == [
            (2, predicted, False),
            (own, None, True),
        ]
    text = ok(cli_factory(any_url, factory, embeddings="lexical"), "run", "compare", a, b).stdout
    assert "? How far do foragers fly?" in text
    assert f"  A  #{result['checkins_a'][1]['id']} days 3-{own} scheduled: pending" in text
    assert "(hidden until the human's blind answer is stored)" in text


class cli_db_for(cli_db):
    def __init__(self, url: str) -> None:
        from loopsim.record import db as dbmod

        self.database = dbmod.Database.open(url)
