"""The day loop with a scripted model at the network seam, on real databases."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event

from loopsim.chat.handle import ChatHandle, RetryPolicy
from loopsim.config import Settings
from loopsim.errors import ConcurrentWrite, InvalidState
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import Store
from loopsim.record.tables import utcnow
from loopsim.researcher.conversation import Researcher
from loopsim.schemas import DayStatus, RunStatus
from loopsim.testing import (
    ScriptedChatModel,
    add_day,
    default_reply,
    report_json,
    scripted_factory,
)
from tests.conftest import make_run

GOOD = report_json(
    (
        "note",
        "Dance floor survey",
        "Counted dances on the comb for an hour and wrote down which directions recur.",
    )
)
DIGITS = report_json(("note", "Numbers", "1234567890 1234567890 1234567890 1234567890"))


@pytest.fixture
def database(any_db):
    """Every loop test here runs on SQLite and on PostgreSQL."""
    return any_db


def loop_for(database: Database, script=(default_reply,), **settings):
    factory, model = scripted_factory(script)
    return Loop(database, Settings(**settings), factory), model


def days_of(database: Database, run_id: str):
    with database.read() as session:
        return list(Store(session).list_days(run_id))


def test_days_commit_in_order_with_their_entries(any_db, spec):
    run_id = make_run(any_db, spec)
    loop, model = loop_for(any_db)
    results = loop.run_days(run_id, 3)
    assert [r.index for r in results] == [1, 2, 3]
    assert all(r.status == DayStatus.COMMITTED and r.entries == 2 for r in results)
    days = days_of(any_db, run_id)
    assert [d.index for d in days] == [1, 2, 3]
    assert all(d.external_date.isoformat() == "2025-06-02" for d in days)
    assert days[0].model_id == "scripted:test"
    assert days[0].model_version == "scripted-1"
    assert days[0].tokens_in > 0
    assert days[0].tokens_out > 0
    with any_db.read() as session:
        store = Store(session)
        assert store.verify_chain(run_id).checked == 6
        assert store.get_run(run_id).status == RunStatus.RUNNING
    assert len(model.calls) == 3


def test_each_day_sees_what_earlier_days_wrote(database, spec):
    run_id = make_run(database, spec)
    loop, model = loop_for(database)
    loop.run_days(run_id, 2)
    first, second = (call[-1].text for call in model.calls)
    assert "this is the first day" in first
    assert "Observations for 2025-06-02" in second
    assert "first day" not in second


def test_equal_records_give_byte_equal_prompts_in_or_out_of_one_process(database, spec):
    """Run A steps 3 days with one Loop; run B builds everything fresh for every day."""
    run_a, run_b = make_run(database, spec), make_run(database, spec)
    loop_a, _ = loop_for(database)
    loop_a.run_days(run_a, 3)
    for _ in range(3):
        fresh_db = Database.open(database.url.render_as_string(hide_password=False))
        loop_b, _ = loop_for(fresh_db)
        loop_b.run_days(run_b, 1)
        fresh_db.dispose()
    days_a, days_b = days_of(database, run_a), days_of(database, run_b)
    assert [d.prompt for d in days_a] == [d.prompt for d in days_b]
    assert [d.prompt_hash for d in days_a] == [d.prompt_hash for d in days_b]
    assert len({d.prompt_hash for d in days_a}) == 3  # each day saw a different record


def test_invalid_reply_is_retried_with_the_error_fed_back(database, spec):
    run_id = make_run(database, spec)
    loop, model = loop_for(database, ["not json at all", DIGITS, GOOD])
    (result,) = loop.run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED
    assert days_of(database, run_id)[0].attempts == 3
    retry_prompt = model.calls[1][-1].text
    assert "not valid" in retry_prompt
    assert "Invalid JSON" in retry_prompt
    assert "digits" in model.calls[2][-1].text
    assert model.calls[1][0].text == model.calls[0][0].text  # same system prompt


def test_still_invalid_records_a_failed_day_and_fails_the_run_after_n(database, spec):
    run_id = make_run(database, spec)
    loop, model = loop_for(database, ['{"entries": []}'])
    (result,) = loop.run_days(run_id, 3)
    assert result.status == DayStatus.FAILED
    assert len(model.calls) == 3
    (day,) = days_of(database, run_id)
    assert day.status == DayStatus.FAILED
    assert day.raw_output == '{"entries": []}'
    assert "at least 1 item" in day.error
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_id)
        assert store.list_entries(run_id) == []
    assert run.status == RunStatus.RUNNING  # one failure is not yet a failed run
    loop.run_days(run_id, 1)
    (third,) = loop.run_days(run_id, 1)  # max_failed_days defaults to 3
    assert third.run_failed
    with database.read() as session:
        run = Store(session).get_run(run_id)
    assert run.status == RunStatus.FAILED
    # Three tries of day 1: a failed day does not take an index.
    assert run.status_reason.startswith("3 failed days in a row; day 1: entries")
    with pytest.raises(InvalidState, match="run resume"):
        loop.run_days(run_id, 1)


def test_oversized_reply_fails_the_day_without_retrying(database, spec):
    run_id = make_run(database, spec)
    huge = report_json(("note", "Long", "word " * 5000))
    loop, model = loop_for(database, [huge], max_output_chars=1000)
    (result,) = loop.run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert "over the cap of 1000" in result.error
    assert len(model.calls) == 1
    assert len(days_of(database, run_id)[0].raw_output) == 1000


def test_a_reply_in_one_code_fence_is_accepted(database, spec):
    run_id = make_run(database, spec)
    loop, _ = loop_for(database, [f"```json\n{GOOD}\n```"])
    assert loop.run_days(run_id, 1)[0].status == DayStatus.COMMITTED


def test_nul_bytes_and_control_characters_never_reach_an_entry(database, spec):
    run_id = make_run(database, spec)
    bad = json.dumps(
        {
            "entries": [
                {
                    "kind": "note",
                    "title": "Bell\u0007",
                    "body": "Hidden \u0000 NUL and \u001b[31m escapes here",
                }
            ]
        }
    )
    loop, _ = loop_for(database, [bad])
    (result,) = loop.run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert "\x00" not in days_of(database, run_id)[0].raw_output


def test_dead_endpoint_records_a_failed_day_with_no_entries(database, spec):
    run_id = make_run(database, spec)
    loop, _ = loop_for(database, [ConnectionError("connection refused")])
    (result,) = loop.run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert result.error == "model scripted:test failed: ConnectionError: connection refused"
    (day,) = days_of(database, run_id)
    assert day.status == DayStatus.FAILED
    assert day.raw_output == ""
    assert day.worker == "cli"
    with database.read() as session:
        assert Store(session).list_entries(run_id) == []


def test_a_failed_day_keeps_its_index_and_the_next_try_takes_it(database, spec):
    """Issue 14 item 6: a dead endpoint took day 1's index, so the first day the researcher
    wrote was day 2, and every later day was numbered one past what it was."""
    run_id = make_run(database, spec)
    loop, _ = loop_for(database, [ConnectionError("connection refused"), GOOD])
    (failed,) = loop.run_days(run_id, 1)
    assert (failed.status, failed.index) == (DayStatus.FAILED, 1)
    (done,) = loop.run_days(run_id, 1)
    assert (done.status, done.index) == (DayStatus.COMMITTED, 1)
    (after,) = loop.run_days(run_id, 1)
    assert after.index == 2
    days = [(d.index, d.status) for d in days_of(database, run_id)]
    assert days == [(1, "failed"), (1, "committed"), (2, "committed")]
    with database.read() as session:
        store = Store(session)
        assert store.get_day(run_id, 1).status == DayStatus.COMMITTED
        assert store.committed_days_after(run_id, 0) == 2
        assert store.next_day_index(run_id) == 3
        (first_entry, _index, _status) = store.list_entries(run_id)[0]
        assert first_entry.title == "Dance floor survey"


def test_a_retried_day_samples_afresh_with_the_same_prompt(database, spec):
    """A retry at the same index must not repeat the failure with the same seed."""
    run_id = make_run(database, spec)
    loop, _ = loop_for(database, ['{"entries": []}'])
    first = loop.plan(run_id)
    assert first is not None
    assert first.failed_tries == 0
    first_seed = next(loop.conversation(first)).seed
    loop.run_days(run_id, 1)
    retry = loop.plan(run_id)
    assert retry is not None
    assert (retry.index, retry.failed_tries) == (1, 1)
    assert retry.prompt.hash == first.prompt.hash
    assert next(loop.conversation(retry)).seed != first_seed


def test_a_unique_index_still_refuses_two_committed_days_at_one_index(database, spec):
    """Failed tries may share an index; the days that hold one may not."""
    from sqlalchemy.exc import IntegrityError

    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.run_days(run_id, 1)
    with pytest.raises(IntegrityError), database.write() as session:
        add_day(Store(session), run_id, 1)
    with database.write() as session:  # a failed try at a held index is allowed
        add_day(Store(session), run_id, 1, status=DayStatus.FAILED)


def test_a_second_writer_for_the_same_day_is_refused(database, spec):
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    loop.start(run_id)
    planned = loop.plan(run_id)
    outcome = Researcher(loop._chat(planned.model_id, planned.spec)).work(planned.prompt)
    loop.commit(planned, outcome, utcnow())
    with pytest.raises(ConcurrentWrite):
        loop.commit(planned, outcome, utcnow())
    assert [d.index for d in days_of(database, run_id)] == [1]


def test_budget_completes_the_run(database, spec):
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"days": 2})})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    assert len(loop.run_days(run_id, 5)) == 2
    with database.read() as session:
        run = Store(session).get_run(run_id)
    assert run.status == RunStatus.COMPLETED
    with pytest.raises(InvalidState, match="completed"):
        loop.run_days(run_id, 1)


def status_of(database: Database, run_id: str) -> str:
    with database.read() as session:
        return Store(session).get_run(run_id).status


def test_the_budgets_last_day_completes_the_run_at_once(database, spec):
    """`run step` asked for exactly the days left: the run stayed `running` until another
    step found nothing to do. Unless a check-in opens after the last day: the run waits
    for it, and approving it completes the run; rejecting it leaves days to step again."""
    from loopsim.checkin.decision import decide
    from loopsim.schemas import Decision

    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"days": 2})})
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    assert len(loop.run_days(run_id, 1)) == 1
    assert status_of(database, run_id) == RunStatus.RUNNING
    stopping = iter([False, True])  # a Ctrl-C during the last day: the next step tests
    assert len(loop.run_days(run_id, 1, should_stop=lambda: next(stopping, True))) == 1
    assert status_of(database, run_id) == RunStatus.RUNNING
    assert loop.run_days(run_id, 1) == []
    assert status_of(database, run_id) == RunStatus.COMPLETED

    checked = spec.model_copy(
        update={"checkins": spec.checkins.model_copy(update={"every_days": 2})}
    )
    run_id = make_run(database, checked)
    assert len(loop.run_days(run_id, 2)) == 2
    assert status_of(database, run_id) == RunStatus.AWAITING_CHECKIN
    decide(database, loop.opened_checkin, Decision.REJECT)  # days 1-2 reverted
    assert status_of(database, run_id) == RunStatus.RUNNING
    assert len(loop.run_days(run_id, 2)) == 2
    assert loop.opened_checkin is not None
    decide(database, loop.opened_checkin, Decision.APPROVE)
    assert status_of(database, run_id) == RunStatus.COMPLETED
    with pytest.raises(InvalidState, match="completed"):
        loop.run_days(run_id, 1)


def test_a_spent_budget_opens_a_last_checkin_over_the_unreviewed_days(database, spec):
    """A run checked in every 3 days with a budget of 4 completed after day 4 with that
    day never reviewed: no check-in would ever come, and the dataset export said it
    awaited one for good. The spent budget now opens a last check-in (unless the spec
    turns it off), and approving it completes the run."""
    from loopsim.checkin.decision import decide
    from loopsim.schemas import CheckinReason, Decision

    policy = spec.checkins.model_copy(update={"every_days": 3, "final": True})
    budget = spec.budget.model_copy(update={"days": 4})
    final = spec.model_copy(update={"checkins": policy, "budget": budget})
    run_id = make_run(database, final)
    loop, _ = loop_for(database)
    assert len(loop.run_days(run_id, 10)) == 3
    decide(database, loop.opened_checkin, Decision.APPROVE)  # the scheduled one, days 1-3
    assert len(loop.run_days(run_id, 10)) == 1
    assert status_of(database, run_id) == RunStatus.AWAITING_CHECKIN
    with database.read() as session:
        last = Store(session).list_checkins(run_id)[-1]
    assert (last.reason, last.first_day_index, last.last_day_index) == (
        CheckinReason.BUDGET,
        4,
        4,
    )
    assert last.detail == "the day budget of 4 is spent: a last look before it completes"
    decide(database, last.id, Decision.APPROVE)
    assert status_of(database, run_id) == RunStatus.COMPLETED

    unchecked = final.model_copy(update={"checkins": policy.model_copy(update={"final": False})})
    run_id = make_run(database, unchecked)
    assert len(loop.run_days(run_id, 3)) == 3
    decide(database, loop.opened_checkin, Decision.APPROVE)
    assert len(loop.run_days(run_id, 10)) == 1
    assert loop.opened_checkin is None
    assert status_of(database, run_id) == RunStatus.COMPLETED


def test_should_stop_stops_at_a_day_boundary(database, spec):
    run_id = make_run(database, spec)
    loop, _ = loop_for(database)
    seen = []
    results = loop.run_days(run_id, 5, on_day=seen.append, should_stop=lambda: len(seen) >= 2)
    assert len(results) == 2
    assert [d.index for d in days_of(database, run_id)] == [1, 2]


def test_a_reply_that_copies_the_instructions_is_retried_with_the_reason(database, spec):
    """The 270M model copied the prompt's example word for word; such a reply is refused
    like any invalid one, the reason fed back, and the retry's own words are kept."""
    from loopsim.researcher.prompts import EXAMPLE_ENTRY

    copy = report_json(("hypothesis", EXAMPLE_ENTRY["title"], EXAMPLE_ENTRY["body"]))
    run_id = make_run(database, spec, model="openai:some-model")  # shown the example
    loop, model = loop_for(database, [copy, GOOD])
    (result,) = loop.run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED
    feedback = model.calls[1][-1].text
    assert "copies the instructions word for word" in feedback
    assert "before building anything elaborate i should check" in feedback
    with database.read() as session:
        (day,) = Store(session).list_days(run_id)
        entries = [e for e, _, _ in Store(session).list_entries(run_id)]
    assert day.attempts == 2
    assert [e.title for e in entries] == ["Dance floor survey"]


def test_a_day_that_only_copies_fails_and_writes_nothing(database, spec):
    from loopsim.researcher.prompts import EXAMPLE_ENTRY

    copy = report_json(("hypothesis", EXAMPLE_ENTRY["title"], EXAMPLE_ENTRY["body"]))
    run_id = make_run(database, spec, model="openai:some-model")
    loop, _ = loop_for(database, [copy])
    (result,) = loop.run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert "copies the instructions" in result.error
    with database.read() as session:
        assert Store(session).list_entries(run_id) == []


def test_the_embedded_path_prompt_has_no_example_and_stays_byte_equal(database, spec):
    """A grammar-constrained (llamacpp:) run is shown the reply's shape, not an example
    it would copy; two such runs with equal records still get byte-equal prompts."""
    from loopsim.researcher.prompts import EXAMPLE_ENTRY

    embedded = [make_run(database, spec, model="llamacpp:gemma3-270m") for _ in range(2)]
    hosted = make_run(database, spec, model="openai:some-model")
    loop, model = loop_for(database)
    for run_id in (*embedded, hosted):
        loop.run_days(run_id, 1)
    first, second, shown = (call[0].text for call in model.calls)
    assert EXAMPLE_ENTRY["title"] not in first
    assert "For example" not in first
    assert first == second
    assert EXAMPLE_ENTRY["title"] in shown
    with database.read() as session:
        hashes = [Store(session).list_days(r)[0].prompt_hash for r in embedded]
    assert hashes[0] == hashes[1]


def test_a_server_that_holds_the_reply_to_its_schema_is_shown_no_example(database, spec):
    """The how-to's llama-cpp-python server (LOOPSIM_RESPONSE_FORMAT=json_object, which it
    turns into a grammar) serving the 270M model was shown the example reply, and copied
    it: 7 of 8 tries refused. Such a server gets the embedded model's prompt; a server
    asked with json_schema (OpenAI, vLLM) still sees the example."""
    from loopsim.researcher.prompts import EXAMPLE_ENTRY

    run_id = make_run(database, spec, model="openai:gemma3-270m")
    for form, shown in (("json_object", False), ("json_schema", True)):
        loop, model = loop_for(database, response_format=form)
        loop.run_days(run_id, 1)
        (call,) = model.calls
        assert (EXAMPLE_ENTRY["title"] in call[0].text) is shown, form


def calls_of(database: Database, run_id: str, index: int):
    with database.read() as session:
        store = Store(session)
        return [
            (c.task, c.role, c.attempt, c.accepted, c.reply, c.error, c.latency_ms)
            for c in store.day_calls(store.get_day(run_id, index).id)
        ]


def test_a_day_whose_endpoint_dies_on_a_retry_keeps_what_it_cost(database, spec):
    """Issue 18 item 7: a failed day stored 0 attempts and 0 ms, and lost the calls it made
    before the endpoint went down."""
    run_id = make_run(database, spec)
    script = ['{"entries": []}', ConnectionError("connection reset by peer")]
    factory, _ = scripted_factory(script, delay=0.05)
    (result,) = Loop(database, Settings(), factory).run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert "connection reset" in result.error
    (day,) = days_of(database, run_id)
    assert day.attempts == 2
    assert day.raw_output == '{"entries": []}'
    assert day.latency_ms >= 100
    assert result.latency_ms == day.latency_ms
    (first, second) = calls_of(database, run_id, 1)
    assert first[:4] == (0, "day", 1, False)
    assert "at least 1 item" in first[5]
    assert second[:5] == (0, "day", 2, False, "")
    assert "connection reset" in second[5]
    assert first[6] + second[6] == day.latency_ms


def test_a_day_that_never_validates_records_every_attempt_and_its_time(database, spec):
    run_id = make_run(database, spec)
    factory, model = scripted_factory(['{"entries": []}'], delay=0.05)
    (result,) = Loop(database, Settings(max_retries=2), factory).run_days(run_id, 1)
    assert result.status == DayStatus.FAILED
    assert len(model.calls) == 3
    (day,) = days_of(database, run_id)
    assert day.attempts == 3
    assert day.latency_ms >= 150
    assert sum(c[6] for c in calls_of(database, run_id, 1)) == day.latency_ms


def test_attempts_count_the_requests_an_endpoint_retry_took(database, spec):
    """A day's ``attempts`` are the requests sent for its report, endpoint retries
    included: two refused connections and a good reply are three."""
    run_id = make_run(database, spec)
    model = ScriptedChatModel(script=[ConnectionError("refused"), ConnectionError("refused"), GOOD])

    def factory(model_id, model_spec, max_tokens):
        retry = RetryPolicy(attempts=3, initial=0.05)
        return ChatHandle(model_id, model, version="scripted-1", retry=retry)

    (result,) = Loop(database, Settings(), factory).run_days(run_id, 1)
    assert result.status == DayStatus.COMMITTED
    (day,) = days_of(database, run_id)
    assert day.attempts == 3
    assert day.latency_ms >= 75
    ((task, role, attempt, accepted, _, _, latency),) = calls_of(database, run_id, 1)
    assert (task, role, attempt, accepted, latency) == (0, "day", 1, True, day.latency_ms)


def test_a_changed_spec_reaches_the_next_day_of_the_same_loop(any_db, spec):
    """The loop keeps each run's parsed spec between days; a spec changed on the run's row
    (a human editing it, as step_bench does) must reach the very next day's prompt and
    budget, never the copy parsed before. A cache keyed by run id alone fails here."""
    run_id = make_run(any_db, spec)
    loop, model = loop_for(any_db)
    loop.run_days(run_id, 2)
    assert "Dr. Test Person" in model.calls[-1][0].text
    with any_db.write() as session:
        run = Store(session).get_run(run_id)
        persona = {**run.spec["persona"], "name": "Dr. Other Person"}
        run.spec = {**run.spec, "persona": persona, "budget": {**run.spec["budget"], "days": 3}}
    assert loop.step(run_id) is not None
    system = model.calls[-1][0].text
    assert "Dr. Other Person" in system
    assert "Dr. Test Person" not in system
    assert loop.step(run_id) is None  # the new budget of 3 days is spent


def test_two_runs_in_one_loop_each_step_with_their_own_spec(any_db, spec):
    """Two runs in one loop keep apart: each day is planned with its own run's spec."""
    persona = spec.persona.model_copy(update={"name": "Dr. Fork Person"})
    other = spec.model_copy(update={"persona": persona})
    first, second = make_run(any_db, spec), make_run(any_db, other)
    loop, model = loop_for(any_db)
    for _ in range(2):
        for run_id, name in ((first, "Dr. Test Person"), (second, "Dr. Fork Person")):
            loop.start(run_id)
            loop.step(run_id)
            assert name in model.calls[-1][0].text


def test_the_spec_cache_answers_the_same_row_twice_and_sees_an_amended_spec(database, spec):
    """A turn asks twice for one loaded row's spec; a spec stored anew (a new dict,
    equal or not) is compared by its JSON, and a changed one is parsed again."""
    from loopsim.specs import SpecCache

    run_id = make_run(database, spec)
    cache = SpecCache()
    with database.read() as session:
        run = Store(session).get_run(run_id)
        first = cache(run)
        assert cache(run) is first
    with database.read() as session:  # the same stored spec, loaded again: a new dict
        assert cache(Store(session).get_run(run_id)) is first
    with database.write() as session:
        run = Store(session).get_run(run_id)
        run.spec = {**run.spec, "budget": {**run.spec["budget"], "days": 7}}
    with database.read() as session:
        amended = cache(Store(session).get_run(run_id))
    assert amended is not first
    assert amended.budget.days == 7


def test_stepping_days_reads_the_check_in_history_once_a_day(database, spec):
    """`run step --days N` tests for a check-in before each day in the read that plans the
    day, as a worker's turn does, and once more after the last day: the check-in history
    is read once a day, not twice, and a check-in due after the last day still opens."""
    checkins = spec.checkins.model_copy(update={"every_days": 4, "spot_check_probability": 0})
    run_id = make_run(database, spec.model_copy(update={"checkins": checkins}))
    loop, _ = loop_for(database)
    reads: list[str] = []

    def grab(_conn, _cursor, statement: str, *_args) -> None:
        words = statement.split()
        if words[0].upper() == "SELECT" and "checkins" in words[words.index("FROM") + 1 :][:1]:
            reads.append(statement)

    event.listen(database.engine, "before_cursor_execute", grab)
    try:
        first = loop.run_days(run_id, 3)
        assert loop.opened_checkin is None
        read_in_three_days = len(reads)
        second = loop.run_days(run_id, 5)  # a check-in is due after day 4
    finally:
        event.remove(database.engine, "before_cursor_execute", grab)
    assert [r.index for r in first + second] == [1, 2, 3, 4]
    assert loop.opened_checkin is not None
    with database.read() as session:
        assert Store(session).get_run(run_id).status == RunStatus.AWAITING_CHECKIN
    assert read_in_three_days == 3 + 1


def test_the_embedded_model_is_not_shown_its_invalid_reply_on_a_retry(database, spec):
    """The embedded 270M model copies its context: shown its invalid reply as the last
    assistant turn, it sent it back byte for byte on every retry. Its retry asks the first
    prompt again with the reason added to the last turn; a hosted model still sees its
    reply, to mend it."""
    bad = '{"entries": [{"kind": "note", "title": "15.06.2024", "body": "Copied."}]}'
    embedded = make_run(database, spec, model="llamacpp:gemma3-270m")
    loop, model = loop_for(database, [bad, GOOD])
    (result,) = loop.run_days(embedded, 1)
    assert result.status == DayStatus.COMMITTED
    first, retry = model.calls
    assert len(retry) == len(first)
    assert [m.type for m in retry] == [m.type for m in first]
    assert "15.06.2024" not in "".join(m.text for m in retry)
    assert retry[-1].text.startswith(first[-1].text)
    assert "(Try 2. Your last reply was not valid: " in retry[-1].text
    assert "mostly not letters" in retry[-1].text

    # The same invalid reply twice: the third try is still not the second's prompt.
    again = make_run(database, spec, model="llamacpp:gemma3-270m")
    loop, model = loop_for(database, [bad, bad, GOOD])
    loop.run_days(again, 1)
    _, second, third = model.calls
    assert second[-1].text != third[-1].text
    assert "(Try 3. Your last reply" in third[-1].text

    hosted = make_run(database, spec, model="openai:some-model")
    loop, model = loop_for(database, [bad, GOOD])
    loop.run_days(hosted, 1)
    first, retry = model.calls
    assert [m.type for m in retry] == [*(m.type for m in first), "ai", "human"]
    assert "15.06.2024" in retry[-2].text
