"""The conditional in the spec, and forks: a run that starts from another's record at a
day, proves that prefix in `record verify`, and goes on under changed conditions. On
SQLite and PostgreSQL, with the scripted model at the network seam."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from sqlalchemy import func, select, text

from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.chain import entry_hash
from loopsim.record.runs import spec_hash
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord, CheckIn, Day, Entry, Probe, ProbePair, Run
from loopsim.researcher.prompts import FRAMING
from loopsim.schemas import parse_spec
from loopsim.testing import amplified_reply, report_json, scripted_factory
from tests import golden_prompts
from tests.conftest import SPEC, write_spec

NOISY = "You work in a noisy, underfunded lab with a grant report due on Friday."


def thoughtful(messages: list[BaseMessage]) -> str:
    """A valid day whose words depend on the whole prompt: equal prompts, equal days."""
    digest = hashlib.sha256("".join(m.text for m in messages).encode()).hexdigest()[:6]
    words = " ".join(f"w{c}" for c in digest if c.isalpha()) or "plain"
    return report_json(
        ("note", f"Reading notes {digest}", f"I read the log again and noted {words} today."),
        ("question", "What to measure next", "Which measurement would separate the ideas?"),
    )


def open_db(url: str) -> dbmod.Database:
    return dbmod.Database.open(url)


def stepped_run(
    database: dbmod.Database, days: int, spec: dict[str, Any] | None = None, script: Any = None
) -> str:
    spec_obj = parse_spec({**SPEC, "budget": {"days": 10}, **(spec or {})})
    with database.write() as session:
        run_id = Store(session).create_run(spec_obj, name="parent", model="scripted:test").id
    step(database, run_id, days, script=script)
    return run_id


def step(database: dbmod.Database, run_id: str, days: int, script: Any = None) -> None:
    factory, _ = scripted_factory([script or thoughtful])
    Loop(database, Settings(), factory).run_days(run_id, days)


def snapshot(database: dbmod.Database, run_id: str) -> dict[str, Any]:
    """Everything of one run that a fork must never change."""
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        counts = {
            table.__tablename__: session.scalar(
                select(func.count()).select_from(table).where(table.run_id == run_id)
            )
            for table in (Day, Entry, CallRecord, Probe, CheckIn)
        }
        return {
            "head": store.chain_head(run_id),
            "counts": counts,
            "run": (run.status, run.updated_at, run.spec, run.model, run.secret_seed),
            "hashes": list(session.scalars(select(Entry.hash).where(Entry.run_id == run_id))),
        }


def day_rows(database: dbmod.Database, run_id: str, through: int) -> list[tuple[Any, ...]]:
    with database.read() as session:
        days = session.scalars(
            select(Day)
            .where(Day.run_id == run_id, Day.index <= through)
            .order_by(Day.index, Day.id)
        )
        return [
            (d.index, d.external_date, d.status, d.prompt_hash, d.prompt, d.raw_output)
            for d in days
        ]


def entry_rows(database: dbmod.Database, run_id: str, through_seq: int) -> list[tuple[Any, ...]]:
    with database.read() as session:
        rows = Store(session).list_entries(run_id)
        return [
            (e.seq, idx, status, e.kind, e.title, e.body, e.prev_hash, e.hash)
            for e, idx, status in rows
            if e.seq <= through_seq
        ]


def day_calls(database: dbmod.Database, run_id: str, index: int) -> list[list[dict[str, str]]]:
    with database.read() as session:
        calls = session.scalars(
            select(CallRecord)
            .join(Day, CallRecord.day_id == Day.id)
            .where(CallRecord.run_id == run_id, Day.index == index)
            .order_by(CallRecord.ordinal)
        )
        return [c.messages for c in calls]


@pytest.fixture
def cli(cli_factory, any_url):
    factory, _ = scripted_factory([thoughtful])
    return cli_factory(any_url, factory)


def fork(cli, run_id: str, day: int, overrides: Path | None = None, *more: str) -> str:
    args = ["run", "fork", run_id, "--at-day", str(day), *more]
    result = cli(*args, *([str(overrides)] if overrides else []))
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_a_fork_at_day_5_of_10_shares_the_prefix_and_differs_only_by_its_override(
    cli, any_url, tmp_path
):
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 10)
        before = snapshot(database, parent)
        overrides = write_spec(tmp_path / "noisy.toml", f'[conditional]\nframing = "{NOISY}"\n')
        child = fork(cli, parent, 5, overrides)
        with database.read() as session:
            forked = Store(session).get_run(child)
            prefix = forked.fork_seq
            assert (forked.parent_run_id, forked.fork_day) == (parent, 5)
        assert prefix == 10  # two entries a day

        # The first 5 days, byte for byte: days, entries and their chain.
        assert day_rows(database, child, 5) == day_rows(database, parent, 5)
        assert entry_rows(database, child, prefix) == entry_rows(database, parent, prefix)
        with database.read() as session:
            assert len(Store(session).list_days(child)) == 5
            ours = Store(session).verify_chain(child)
            theirs = Store(session).verify_chain(parent, until_seq=prefix)
        assert (ours.ok, ours.checked, ours.head) == (True, theirs.checked, theirs.head)
        verified = cli("record", "verify", child)
        assert verified.exit_code == 0, verified.output
        assert f"fork of run {parent} at day 5: its first 10 entries equal the parent's" in (
            verified.stdout
        )

        step(database, child, 5)
        assert snapshot(database, parent) == before  # forking and stepping the fork

        # Day 6: the same view (user message), the same system text but the framing.
        ours6, theirs6 = day_calls(database, child, 6), day_calls(database, parent, 6)
        assert len(ours6) == len(theirs6) == 1
        assert [m["role"] for m in ours6[0]] == [m["role"] for m in theirs6[0]]
        assert ours6[0][1:] == theirs6[0][1:]
        assert FRAMING in theirs6[0][0]["content"]
        assert ours6[0][0]["content"] != theirs6[0][0]["content"]
        assert ours6[0][0]["content"] == theirs6[0][0]["content"].replace(FRAMING, NOISY)

        # The fork went on by itself to its own day 10, and still verifies.
        with database.read() as session:
            store = Store(session)
            assert [d.index for d in store.list_days(child)] == list(range(1, 11))
            assert store.verify_chain(child).ok
            assert store.chain_head(child) != store.chain_head(parent)
        assert cli("record", "verify", child).exit_code == 0
    finally:
        database.dispose()


def test_a_fork_of_a_fork_of_an_amplified_run_keeps_its_trees_and_proves_its_prefix(cli, any_url):
    # Answers name their sub-questions, critiques their ideas: the copies must name the
    # copies, and still hash as the entries they copy.
    database = open_db(any_url)
    amplified = {"subquestions": {"depth": 1}, "babble": {"ideas": 2}, "digests": {"every_days": 2}}
    try:
        root = stepped_run(database, 6, amplified, script=amplified_reply)
        first = fork(cli, root, 4)
        step(database, first, 2, script=amplified_reply)
        second = fork(cli, first, 6, None, "--name", "grandchild")
        with database.read() as session:
            store = Store(session)
            run, middle = store.get_run(second), store.get_run(first)
            assert (run.name, run.parent_run_id, run.fork_day) == ("grandchild", first, 6)
            copies = session.scalars(
                select(Entry).where(Entry.run_id == second).order_by(Entry.seq)
            ).all()
            trees = {(e.seq, e.parent_id is not None) for e in copies}
            # Days 1-4 were written by the root, 5-6 by the first fork.
            assert {e.origin_run_id for e in copies[: middle.fork_seq]} == {root}
            assert {e.origin_run_id for e in copies[middle.fork_seq :]} == {first}
            seqs = store.entry_seqs(second)
            parents = {e.seq: seqs[e.parent_id] for e in copies if e.parent_id is not None}
            theirs = store.entry_seqs(first)
            originals = session.scalars(select(Entry).where(Entry.run_id == first)).all()
            assert parents == {e.seq: theirs[e.parent_id] for e in originals if e.parent_id}
        assert any(has_parent for _, has_parent in trees)
        assert len(copies) == run.fork_seq
        assert entry_rows(database, second, run.fork_seq) == entry_rows(
            database, first, run.fork_seq
        )
        shown = cli("record", "verify", second)
        assert shown.exit_code == 0, shown.output
        assert f"fork of run {first} at day 6: its first {run.fork_seq} entries equal" in (
            shown.stdout
        )
        step(database, second, 1, script=amplified_reply)
        assert cli("record", "verify", second).exit_code == 0
    finally:
        database.dispose()


def test_verify_of_a_fork_fails_when_the_parents_prefix_was_edited(cli, any_url):
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 4)
        child = fork(cli, parent, 3)
        assert cli("record", "verify", child).exit_code == 0
        with database.write() as session:
            session.execute(
                text("UPDATE entries SET body = 'rewritten' WHERE run_id = :r AND seq = 2"),
                {"r": parent},
            )
        result = cli("record", "verify", child)
        assert result.exit_code == 1
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1
        assert f"its prefix is not run {parent}'s through day 3" in line
    finally:
        database.dispose()


def test_a_fork_outlives_its_deleted_parent_and_its_own_copy_is_still_checked(cli, any_url):
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 3)
        child = fork(cli, parent, 2)
        deleted = cli("run", "delete", parent, "--force")
        assert deleted.exit_code == 0, deleted.output
        assert "1 fork of it keeps its own copy of the prefix" in deleted.stderr
        result = cli("record", "verify", child)
        assert result.exit_code == 0, result.output
        assert "the parent was deleted" in result.stdout
        # An edit of a copied entry whose hash was recomputed still breaks the fork: its
        # chain no longer reaches the head recorded at the fork.
        with database.write() as session:
            last = session.scalars(select(Entry).where(Entry.run_id == child, Entry.seq == 4)).one()
            last.body = "rewritten after the fork"
            last.hash = entry_hash(last, 2)
        broken = cli("record", "verify", child)
        assert broken.exit_code == 1
        assert "head recorded when the run was forked" in broken.stderr
    finally:
        database.dispose()


def test_checkins_and_their_clock_carry_over_so_day_6_sees_what_the_parents_did(cli, any_url):
    # Each approved check-in moves the external date on a day: the fork's day 6 must be
    # dated (and see) what the parent's day 6 was, so the check-ins come with the prefix.
    database = open_db(any_url)
    try:
        spec = {
            "time": {"policy": "per_checkin", "anchor": "2025-06-02", "step_days": 1},
            "checkins": {"every_days": 2, "spot_check_probability": 0.0},
        }
        parent = stepped_run(database, 2, spec)
        for _ in range(3):  # check-ins after days 2 and 4, approved; days 3 to 6 between
            with database.read() as session:
                pending = [c.id for c in Store(session).list_checkins(parent) if not c.decision]
            assert len(pending) == 1
            done = cli("checkin", "decide", str(pending[0]), "--approve", "--skip-probes")
            assert done.exit_code == 0, done.output
            step(database, parent, 2)
        child = fork(cli, parent, 5)
        with database.read() as session:
            copied = Store(session).list_checkins(child)
        assert [(c.last_day_index, c.decision) for c in copied] == [(2, "approve"), (4, "approve")]
        step(database, child, 1)
        assert day_rows(database, child, 6)[5] == day_rows(database, parent, 6)[5]
    finally:
        database.dispose()


@pytest.mark.parametrize(
    ("args", "toml", "expected", "code"),
    [
        (["nope1234"], None, "no run 'nope1234'", 1),
        (["{run}", "--at-day", "0"], None, "--at-day 0: give a day of the run", 2),
        (["{run}", "--at-day", "-3"], None, "--at-day -3: give a day of the run", 2),
        (["{run}", "--at-day", "4"], None, "its last committed day is 3", 2),
        (["{run}"], "[conditional\nframing = 1", "invalid TOML", 2),
        (["{run}"], "[probes]\nx = 1", "probes: cannot be overridden in a fork", 2),
        (["{run}"], "[conditonal]\nframing = 'x'", "conditonal: cannot be overridden", 2),
        (["{run}"], "[conditional]\nframng = 'x'", "conditional.framng: unknown field", 2),
        (["{run}"], "[model]\nname = 'gpt4'", "model.name: value error", 2),
    ],
)
def test_bad_fork_input_gets_one_line_and_writes_nothing(
    cli, any_url, tmp_path, args, toml, expected, code
):
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 3)
        argv = ["run", "fork", *(a.format(run=parent) for a in args)]
        if "--at-day" not in argv:
            argv += ["--at-day", "2"]
        if toml is not None:
            argv.append(str(write_spec(tmp_path / "o.toml", toml)))
        with database.read() as session:
            runs_before = session.scalar(select(func.count()).select_from(Run))
            rows_before = [
                session.scalar(select(func.count()).select_from(t))
                for t in (Day, Entry, Probe, CheckIn, ProbePair)
            ]
        result = cli(*argv)
        assert result.exit_code == code, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]
        with database.read() as session:
            assert session.scalar(select(func.count()).select_from(Run)) == runs_before
            assert [
                session.scalar(select(func.count()).select_from(t))
                for t in (Day, Entry, Probe, CheckIn, ProbePair)
            ] == rows_before
    finally:
        database.dispose()


def test_run_list_show_and_exports_name_the_parent_and_fork_point(
    cli, any_url, tmp_path, monkeypatch
):
    monkeypatch.delenv("COLUMNS", raising=False)
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 3)
    finally:
        database.dispose()
    child = fork(cli, parent, 2)
    listed = {r["id"]: r for r in json.loads(cli("run", "list", "--json").stdout)}
    assert (listed[child]["parent"], listed[child]["fork_day"]) == (parent, 2)
    assert (listed[parent]["parent"], listed[parent]["fork_day"]) == (None, None)
    assert f"{parent[:8]}@2" in cli("run", "list").stdout
    # Into a pipe every value is whole; in 80 columns each run still takes one line, its
    # model cut with an ellipsis rather than folded onto the next lines.
    name = next(r["name"] for r in listed.values() if r["id"] == child)
    piped = [line for line in cli("run", "list").stdout.splitlines() if line.startswith(child)]
    assert name in piped[0]
    assert listed[child]["model"] in piped[0]
    monkeypatch.setenv("COLUMNS", "80")
    lines = cli("run", "list").stdout.splitlines()
    assert len(lines) == 1 + len(listed), lines
    assert all(len(line) <= 80 for line in lines), lines
    shown_ids = [line.split()[0] for line in lines[1:]]
    assert all(
        i in (r["id"], r["id"][:12]) for i, r in zip(shown_ids, listed.values(), strict=True)
    )
    shown = cli("run", "show", child).stdout
    assert f"forked from     {parent} at day 2" in shown
    assert f"forks           {child}" in cli("run", "show", parent).stdout
    md = cli("export", child, "--format", "md").stdout
    assert f"- forked from: run `{parent}` at day 2" in md
    first = json.loads(cli("export", child, "--format", "jsonl").stdout.splitlines()[0])
    assert (first["parent_run_id"], first["fork_day"]) == (parent, 2)
    assert first["spec_hash"] == json.loads(cli("run", "show", child, "--json").stdout)["spec_hash"]
    out = tmp_path / "r.html"
    assert cli("export", child, "--format", "html", "-o", str(out)).exit_code == 0
    assert (
        f'forked from run <a href="{parent}.html"><code>{parent}</code></a> at day 2'
        in out.read_text()
    )


# ---------------------------------------------------------------------- the conditional


def test_a_spec_without_a_conditional_gets_the_prompts_it_always_had(tmp_path):
    # The golden file was written by the code from before [conditional] existed.
    url = str(tmp_path / "golden.db")
    dbmod.upgrade(url)
    golden = json.loads(golden_prompts.GOLDEN.read_text("utf-8"))
    assert {p["role"] for p in golden} == {"day", "subquestion", "critic", "digest", "probe"}
    assert golden_prompts.record_prompts(url) == golden


def test_the_conditional_reaches_every_researcher_and_the_spec_hash(tmp_path):
    old = parse_spec(golden_prompts.SPEC)
    noisy = parse_spec({**golden_prompts.SPEC, "conditional": {"framing": NOISY}})
    explicit = parse_spec({**golden_prompts.SPEC, "conditional": {"framing": FRAMING}})
    assert spec_hash(old) == spec_hash(explicit) == spec_hash(golden_prompts.SPEC)
    assert spec_hash(noisy) != spec_hash(old)
    url = str(tmp_path / "noisy.db")
    dbmod.upgrade(url)
    golden = json.loads(golden_prompts.GOLDEN.read_text("utf-8"))
    prompts = golden_prompts.record_prompts(
        url, {**golden_prompts.SPEC, "conditional": {"framing": NOISY}}
    )
    assert len(prompts) == len(golden)
    for ours, theirs in zip(prompts, golden, strict=True):
        system = theirs["messages"][0]["content"]
        assert FRAMING in system, theirs["role"]
        assert ours["messages"][0]["content"] == system.replace(FRAMING, NOISY)
        assert ours["messages"][1:] == theirs["messages"][1:]


def test_a_fork_of_a_keyed_run_stays_keyed_and_needs_the_key(cli_factory, sqlite_url):
    key = "fork-chain-key"
    factory, _ = scripted_factory([thoughtful])
    keyed = cli_factory(sqlite_url, factory, chain_key=key)
    database = dbmod.Database.open(sqlite_url, chain_key=key.encode())
    try:
        parent = stepped_run(database, 3)
        child = fork(keyed, parent, 2)
        step(database, child, 2)  # appending needs the key of the chain it copied
    finally:
        database.dispose()
    verified = keyed("record", "verify", child)
    assert verified.exit_code == 0, verified.output
    assert "keyed (HMAC-SHA256)" in verified.stdout
    assert "its first 4 entries equal the parent's" in verified.stdout
    unkeyed = cli_factory(sqlite_url, factory)("record", "verify", child)
    assert unkeyed.exit_code == 1
    assert "this run's chain is keyed; set LOOPSIM_CHAIN_KEY" in unkeyed.stderr


def test_overrides_merge_into_the_parents_spec_table_by_table(cli, any_url, tmp_path):
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 2)
    finally:
        database.dispose()
    overrides = write_spec(
        tmp_path / "o.toml",
        '[persona]\nname = "Dr. Other"\n\n[model]\nname = "openai:gpt-4o-mini"\n\n'
        '[time]\npolicy = "wall_clock"\nanchor = 2025-07-01\nrate = 2.0\n',
    )
    child = fork(cli, parent, 2, overrides)
    shown = json.loads(cli("run", "show", child, "--json").stdout)
    before = json.loads(cli("run", "show", parent, "--json").stdout)
    assert shown["model"] == "openai:gpt-4o-mini"
    assert shown["spec"]["persona"] == {**before["spec"]["persona"], "name": "Dr. Other"}
    assert shown["spec"]["time"] == {"policy": "wall_clock", "anchor": "2025-07-01", "rate": 2.0}
    assert shown["spec"]["charter"] == before["spec"]["charter"]
    assert shown["spec_hash"] != before["spec_hash"]
    assert before["forks"] == [child]
    assert cli("db", "check").exit_code == 0


def test_entries_copied_from_another_run_do_not_verify_outside_a_fork_prefix(cli, any_url):
    # Copies of a run's entries, passed off as another run's own record, keep their
    # hashes; only the fork prefix the run was created with may hold them.
    database = open_db(any_url)
    try:
        source = stepped_run(database, 2)
        child = fork(cli, source, 2)
        with database.write() as session:
            session.execute(
                text("UPDATE runs SET parent_run_id = NULL, fork_seq = NULL WHERE id = :r"),
                {"r": child},
            )
        result = cli("record", "verify", child)
        assert result.exit_code == 1
        assert "a copy of another run's entry outside the prefix" in result.stderr
    finally:
        database.dispose()


def test_a_prefix_with_a_failed_try_forks_whole_and_the_fork_goes_on(cli, any_url):
    """A failed try shares its day's index: the fork copies it as history, maps the day's
    entries to the day that held the index, and does not count it toward failing."""
    database = open_db(any_url)
    try:
        parent = stepped_run(database, 1, script=ConnectionError("connection refused"))
        step(database, parent, 3)
        child = fork(cli, parent, 2)
        assert day_rows(database, child, 2) == day_rows(database, parent, 2)
        assert [r[2] for r in day_rows(database, child, 2)] == ["failed", "committed", "committed"]
        assert entry_rows(database, child, 4) == entry_rows(database, parent, 4)
        with database.read() as session:
            store = Store(session)
            assert store.committed_days_after(child, 0) == 2
            assert (
                store.failed_streak(
                    child, 3, after_id=store.get_run(child).resumed_after_day_id or 0
                )
                == 0
            )
        step(database, child, 1)
        assert [r[0] for r in day_rows(database, child, 9)] == [1, 1, 2, 3]
    finally:
        database.dispose()


def test_a_fork_copies_its_prefix_in_the_database_not_in_python(any_url, spec):
    """The days and entries of the prefix are copied by INSERT ... SELECT: peak Python
    memory of a fork of 700 entries and of one of 7,000 is the same, and each copied
    reply still answers the copy of its parent."""
    import tracemalloc

    from tests.test_streams import seed

    database = dbmod.Database.open(any_url)
    peaks, forks = [], []
    for days in (100, 1000):
        run_id = seed(database, spec, days=days)  # trees of 7, failed tries, reverted days
        tracemalloc.start()
        with database.write() as session:
            store = Store(session)
            parent = store.get_run(run_id)
            copy = store.fork_run(parent, days, spec, name="fork", model=parent.model)
            forks.append((run_id, copy.run.id, copy.entries))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    with database.read() as session:
        store = Store(session)
        for parent_id, fork_id, copied in forks:
            assert store.verify_chain(fork_id).ok
            assert store.prove_prefix(store.get_run(fork_id)).ok
            shape = [
                [(e.seq, e.parent_seq, e.kind) for e in entries]
                for _day, entries in store.days_with_entries(fork_id, include_reverted=True)
            ]
            expected = [
                [(e.seq, e.parent_seq, e.kind) for e in entries]
                for _day, entries in store.days_with_entries(parent_id, include_reverted=True)
            ]
            assert shape == expected
            assert copied == sum(map(len, shape)) + 1  # and the correction outside any day
            assert sum(1 for row in shape for e in row if e[1] is not None) > 0
    database.dispose()
    assert peaks[1] < 2 * peaks[0], peaks
