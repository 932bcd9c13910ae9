"""The store on real SQLite and real PostgreSQL: append, chain, verify, search."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from sqlalchemy import text

from loopsim.errors import NotFound
from loopsim.record.store import GENESIS, EntryInput, Store, search_terms
from loopsim.schemas import Author, DayStatus, EntryKind
from loopsim.testing import add_day
from tests.conftest import make_run

DATE = dt.date(2025, 6, 2)


def fill(database, run_id: str, days: int, per_day: int = 2) -> None:
    for index in range(1, days + 1):
        with database.write() as session:
            store = Store(session)
            day = add_day(store, run_id, index)
            store.append_entries(
                run_id,
                [
                    EntryInput(
                        "note",
                        f"Day {index} note {k}",
                        f"Body of note {k} on day {index} about foraging bees",
                    )
                    for k in range(per_day)
                ],
                day=day,
                external_date=DATE,
                model_id="m",
                model_version="m-1",
                prompt_hash="p" * 64,
            )


def test_chain_links_every_entry_and_verifies(any_db, spec):
    run_id = make_run(any_db, spec)
    fill(any_db, run_id, days=3)
    with any_db.read() as session:
        store = Store(session)
        rows = store.list_entries(run_id)
        result = store.verify_chain(run_id)
    assert [e.seq for e, _, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0][0].prev_hash == GENESIS
    for (before, _, _), (after, _, _) in itertools.pairwise(rows):
        assert after.prev_hash == before.hash
    assert result.ok
    assert result.checked == 6
    assert result.head == rows[-1][0].hash


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("body", "'tampered'"),
        ("title", "'x'"),
        ("kind", "'plan'"),
        ("external_date", "'2030-01-01'"),
    ],
)
def test_editing_any_field_by_hand_names_that_entry(any_db, spec, column, value):
    run_id = make_run(any_db, spec)
    fill(any_db, run_id, days=3)
    with any_db.write() as session:
        session.execute(text(f"UPDATE entries SET {column} = {value} WHERE seq = 4"))
    with any_db.read() as session:
        result = Store(session).verify_chain(run_id)
    assert not result.ok
    assert result.broken.seq == 4
    assert result.broken.day_index == 2
    assert result.checked == 3
    assert "day 2, seq 4" in result.broken.describe()


def test_deleting_an_entry_breaks_the_chain_at_the_gap(any_db, spec):
    run_id = make_run(any_db, spec)
    fill(any_db, run_id, days=2)
    with any_db.write() as session:
        session.execute(text("DELETE FROM entries WHERE seq = 2"))
    with any_db.read() as session:
        result = Store(session).verify_chain(run_id)
    assert result.broken.seq == 3
    assert "missing" in result.broken.reason


def test_runs_have_separate_chains(any_db, spec):
    first, second = make_run(any_db, spec), make_run(any_db, spec)
    fill(any_db, first, days=1)
    fill(any_db, second, days=2)
    with any_db.read() as session:
        store = Store(session)
        assert store.verify_chain(first).checked == 2
        assert store.verify_chain(second).checked == 4
        assert store.next_day_index(first) == 2
        assert store.next_day_index(second) == 3


def test_get_run_by_prefix_and_errors(any_db, spec):
    run_id = make_run(any_db, spec)
    with any_db.read() as session:
        store = Store(session)
        assert store.get_run(run_id[:10].upper()).id == run_id
        with pytest.raises(NotFound, match="too short"):
            store.get_run("01")
        with pytest.raises(NotFound, match="run list"):
            store.get_run("zzzzzzzz")
        with pytest.raises(NotFound, match="no day 9"):
            store.get_day(run_id, 9)


def test_search_finds_words_and_hides_reverted_days(any_db, spec):
    run_id = make_run(any_db, spec)
    with any_db.write() as session:
        store = Store(session)
        kept = add_day(store, run_id, 1)
        gone = add_day(store, run_id, 2, status=DayStatus.REVERTED)
        store.append_entries(
            run_id,
            [EntryInput("note", "Waggle dances", "Dance duration encodes distance to the flowers")],
            day=kept,
            external_date=DATE,
        )
        store.append_entries(
            run_id,
            [EntryInput("note", "Reverted waggle idea", "A waggle claim a human rejected")],
            day=gone,
            external_date=DATE,
        )
    with any_db.read() as session:
        store = Store(session)
        visible = store.search(run_id, "waggle dances")
        everything = store.search(run_id, "waggle", include_reverted=True)
        nothing = store.search(run_id, "submarine")
    assert [e.title for e, _, _ in visible] == ["Waggle dances"]
    assert {e.title for e, _, _ in everything} == {"Waggle dances", "Reverted waggle idea"}
    assert nothing == []


def test_search_never_crosses_runs(any_db, spec):
    mine, other = make_run(any_db, spec), make_run(any_db, spec)
    with any_db.write() as session:
        Store(session).append_entries(
            other, [EntryInput("note", "Waggle", "waggle dances")], day=None, external_date=DATE
        )
    with any_db.read() as session:
        assert Store(session).search(mine, "waggle") == []


def test_search_terms_drop_short_and_stop_words_and_fts_syntax():
    assert search_terms('How do "colonies" weigh distance AND NEAR(x)?') == [
        "colonies",
        "weigh",
        "distance",
        "near",
    ]


def test_pinned_queries_respect_external_date(any_db, spec):
    run_id = make_run(any_db, spec)
    with any_db.write() as session:
        store = Store(session)
        store.append_entries(
            run_id,
            [EntryInput(EntryKind.CORRECTION, "Early", "Use sugar water", author=Author.HUMAN)],
            day=None,
            external_date=DATE,
        )
        store.append_entries(
            run_id,
            [EntryInput(EntryKind.CORRECTION, "Later", "From the future", author=Author.HUMAN)],
            day=None,
            external_date=DATE + dt.timedelta(days=5),
        )
    with any_db.read() as session:
        titles = [e.title for e in Store(session).pinned_corrections(run_id, DATE)]
    assert titles == ["Early"]


def test_a_busy_neighbour_run_never_crowds_out_this_runs_matches(any_db, spec):
    mine, busy = make_run(any_db, spec), make_run(any_db, spec)
    with any_db.write() as session:
        store = Store(session)
        store.append_entries(
            busy,
            [EntryInput("note", "Waggle waggle", "waggle waggle waggle dance") for _ in range(600)],
            day=None,
            external_date=DATE,
        )
        store.append_entries(
            mine,
            [EntryInput("note", "Once", "a single waggle among many other words here")],
            day=None,
            external_date=DATE,
        )
    with any_db.read() as session:
        found = Store(session).search(mine, "waggle", limit=20)
    assert [e.title for e, _, _ in found] == ["Once"]


def test_committed_days_after_matches_a_plain_count(any_db, spec):
    # The count is arithmetic on dense day indices; hold it to a row count for every
    # starting day, with failed and reverted days among the committed ones.
    run_id = make_run(any_db, spec)
    statuses = [DayStatus.COMMITTED] * 3 + [DayStatus.FAILED, DayStatus.COMMITTED]
    statuses += [DayStatus.REVERTED] * 2 + [DayStatus.COMMITTED, DayStatus.FAILED]
    with any_db.write() as session:
        store = Store(session)
        assert store.committed_days_after(run_id, 0) == 0  # no days yet
        for index, status in enumerate(statuses, start=1):
            add_day(store, run_id, index, status=status)
    with any_db.read() as session:
        store = Store(session)
        for after in range(len(statuses) + 2):
            plain = sum(s == DayStatus.COMMITTED for s in statuses[after:])
            assert store.committed_days_after(run_id, after) == plain, after
        assert store.committed_days_after(run_id, 0) == store.count_days(
            run_id, DayStatus.COMMITTED
        )
        assert store.committed_days_after(make_run(any_db, spec), 0) == 0


def test_first_answers_keep_each_probes_first_answer_across_check_ins(any_db, spec):
    """What a check-in opening reads to pick a retest: one read for the whole run, the
    same answers the check-in by check-in walk found, and no other run's."""
    from loopsim.checkin.opening import answered_before

    runs = [make_run(any_db, spec), make_run(any_db, spec)]
    with any_db.write() as session:
        store = Store(session)
        for run_id in runs:
            probes = [
                store.add_probe(run_id, f"Question {k}?", source="spec", status="accepted")
                for k in range(3)
            ]
            for number, answered in enumerate([(0, 1), (1, 2), ()]):
                checkin = store.add_checkin(
                    run_id,
                    "scheduled",
                    first_day=number + 1,
                    last_day=number + 1,
                    detail=None,
                    predictions=[(p.id, "A prediction.", False) for p in probes],
                )
                for pair, probe in store.pairs(checkin.id):
                    k = probes.index(probe)
                    if k in answered:
                        pair.human_answer = f"{run_id[:4]}: answer {k} at check-in {number}"
        store.flush()
    with any_db.read() as session:
        store = Store(session)
        found = store.first_answers(runs[0])
        walked: dict[int, str] = {}
        for checkin in store.list_checkins(runs[0]):
            for pair, probe in store.pairs(checkin.id):
                if pair.human_answer is not None:
                    walked.setdefault(probe.id, pair.human_answer)
        assert found == walked == answered_before(store, runs[0])
    prefix = runs[0][:4]
    assert sorted(found.values()) == [
        f"{prefix}: answer 0 at check-in 0",
        f"{prefix}: answer 1 at check-in 0",  # answered again at check-in 1: the first kept
        f"{prefix}: answer 2 at check-in 1",
    ]


def test_a_batch_of_entries_is_one_insert_and_each_gets_its_own_id(any_db, spec):
    """Entries come back from one INSERT with their ids paired by seq (SQLite returns new
    rows in no promised order), and a child still follows its parent's insert."""
    from sqlalchemy import event

    run_id = make_run(any_db, spec)
    inserts: list[str] = []

    def count(_conn, _cursor, statement, *_rest):
        if statement.lstrip().upper().startswith("INSERT INTO ENTRIES"):
            inserts.append(statement)

    event.listen(any_db.engine, "before_cursor_execute", count)
    try:
        with any_db.write() as session:
            store = Store(session)
            day = add_day(store, run_id, 1)
            flat = store.append_entries(
                run_id,
                [EntryInput("note", f"Note {k}", f"Body {k}") for k in range(6)],
                day=day,
                external_date=DATE,
            )
            assert len(inserts) == 1
            tree = store.append_entries(
                run_id,
                [
                    EntryInput("idea", "Idea", "An idea"),
                    EntryInput("critique", "C", "No", parent=0),
                ],
                day=day,
                external_date=DATE,
            )
            assert len(inserts) == 3  # the parent first: the child's hash covers its id
    finally:
        event.remove(any_db.engine, "before_cursor_execute", count)
    with any_db.read() as session:
        rows = session.execute(
            text("SELECT seq, id, parent_id, title FROM entries WHERE run_id = :r"), {"r": run_id}
        ).all()
        assert Store(session).verify_chain(run_id).ok
    stored = {seq: (entry_id, parent_id, title) for seq, entry_id, parent_id, title in rows}
    for entry in [*flat, *tree]:
        assert stored[entry.seq][0] == entry.id
        assert stored[entry.seq][2] == entry.title
    assert stored[tree[1].seq][1] == tree[0].id


def test_a_question_asked_again_is_not_proposed_again(any_db, spec):
    """A memoryless researcher asks the same question day after day: it is offered as a
    probe once (five identical proposals were seen in a first-hour walkthrough), in any
    status, while a new question is still offered."""
    run_id = make_run(any_db, spec)
    same = "Do foragers prefer near patches when nectar is dilute?"
    days = [
        [same, same],  # twice in one day
        [same, "How far do scouts fly on a cold morning?"],
        [same],
    ]
    proposed = []
    for index, questions in enumerate(days, 1):
        with any_db.write() as session:
            store = Store(session)
            day = add_day(store, run_id, index)
            entries = store.append_entries(
                run_id,
                [EntryInput("question", f"Question {k}", q) for k, q in enumerate(questions)],
                day=day,
                external_date=DATE,
            )
            proposed.append(store.propose_probes(entries))
            if index == 1:  # a human rejects it: asked again, it stays rejected
                (probe,) = store.list_probes(run_id, "proposed")
                probe.status = "rejected"
    assert proposed == [1, 1, 0]
    with any_db.read() as session:
        questions = [p.question for p in Store(session).list_probes(run_id)]
    assert sorted(questions) == sorted({same, "How far do scouts fly on a cold morning?"})
