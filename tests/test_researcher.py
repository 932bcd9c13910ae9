"""The fresh researcher's prompt: a pure function of persona, date and view."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pydantic import ValidationError

from loopsim.record.store import Store
from loopsim.researcher.conversation import GRAMMAR_MAX_CHARS, grammar_schema, parse_report
from loopsim.researcher.prompts import build_prompt, example_reply
from loopsim.researcher.view import build_view
from loopsim.schemas import degeneracy
from tests.conftest import make_run

DATE = dt.date(2025, 6, 2)


def prompt_for(database, spec, run_id, date=DATE):
    with database.read() as session:
        view = build_view(Store(session), run_id, spec.charter, date, 3000)
    return build_prompt(spec.persona, view, date)


def test_prompt_holds_persona_framing_view_and_date_last(database, spec):
    prompt = prompt_for(database, spec, make_run(database, spec))
    system, user = prompt.as_dicts()
    assert system["role"] == "system"
    assert "You are Dr. Test Person." in system["content"]
    assert "no memory of earlier days" in system["content"]
    assert user["content"].endswith("Today's date is 2025-06-02. Write today's work.")
    assert "2025-06-02" not in system["content"]


def test_prompt_never_mentions_checks_or_their_schedule(database, spec):
    prompt = json.dumps(prompt_for(database, spec, make_run(database, spec)).as_dicts()).lower()
    for word in ("check-in", "checkin", "probe", "spot check", "schedule", "human review"):
        assert word not in prompt


def test_two_runs_with_equal_records_get_byte_equal_prompts(database, spec):
    first = prompt_for(database, spec, make_run(database, spec))
    second = prompt_for(database, spec, make_run(database, spec))
    assert first.as_dicts() == second.as_dicts()
    assert first.hash == second.hash
    moved = prompt_for(database, spec, make_run(database, spec), DATE + dt.timedelta(days=1))
    assert moved.hash != first.hash


@pytest.mark.parametrize(("subquestions", "ideas"), [(0, 0), (2, 0), (0, 2), (2, 2)])
def test_the_example_is_a_valid_reply_that_uses_what_the_day_may_pose(
    database, spec, subquestions, ideas
):
    # Small models copy the example; it must validate, and show sub-questions or ideas
    # only when the day may pose them (else the day's reply would be refused).
    example = example_reply(subquestions, ideas)
    report = parse_report(example)
    assert bool(report.subquestions) == bool(subquestions)
    assert bool(report.ideas) == bool(ideas)
    assert set(json.loads(example)) <= set(grammar_schema(subquestions, ideas)["properties"])
    for entry in json.loads(example)["entries"]:
        assert len(entry["body"]) <= GRAMMAR_MAX_CHARS
    with database.read() as session:
        view = build_view(Store(session), make_run(database, spec), spec.charter, DATE, 3000)
    system = build_prompt(spec.persona, view, DATE, subquestions=subquestions, ideas=ideas)
    assert example in system.as_dicts()[0]["content"]


def test_grammar_schema_is_tighter_than_validation():
    schema = json.dumps(grammar_schema())
    assert '"maxLength": 1500' not in schema
    assert '"maxLength": 320' in schema
    assert '"maxItems": 3' in schema


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1234567890 1234567890 12345", "digits"),
        ("aaaaaaaaaaaaaaaaaaaaaa", "repeats one character"),
        ("bee bee bee bee bee bee bee bee bee bee", "same few words"),
        ("----//////====.....,,,,;;;;", "not letters"),
        ("plain text with a \x1b[31m escape", "control characters"),
    ],
)
def test_degenerate_text_is_named(text, why):
    assert why in degeneracy(text)


def test_prose_is_not_degenerate():
    assert degeneracy("Foragers returning from far patches danced longer in 2024.") is None


def test_parse_report_repairs_nothing_but_a_single_fence_and_raw_newlines():
    body = '{"entries": [{"kind": "note", "title": "Fine", "body": "A perfectly ordinary body."}]}'
    assert parse_report(body).entries[0].title == "Fine"
    with pytest.raises(ValidationError):
        parse_report(body + " trailing words")
    with pytest.raises(ValidationError):  # still too short, newline or not
        parse_report('{"entries": [{"kind": "note", "title": "Raw\nnewline", "body": "x"}]}')


def test_raw_newlines_and_tabs_in_strings_are_read_other_controls_refused():
    """llama.cpp's server with response_format json_object (the setting the docs give)
    lets a model write paragraphs with raw newlines inside its strings, which strict JSON
    refuses: half of a walkthrough's days failed on "control character found while
    parsing a string". They are read as the characters they are."""
    raw = (
        '{"entries": [{"kind": "note", "title": "Two\tparts",\n'
        '"body": "First paragraph of the day.\nSecond paragraph, after a raw newline."}]}'
    )
    assert "\\n" not in raw  # the newline inside the body string is a raw one
    (entry,) = parse_report(raw).entries
    assert entry.body == "First paragraph of the day.\nSecond paragraph, after a raw newline."
    assert entry.title == "Two\tparts"
    with pytest.raises(ValidationError, match="control characters"):
        parse_report(raw.replace("\nSecond", "\x07Second"))  # a bell is still degenerate
    with pytest.raises(ValidationError, match=r"json_invalid|Invalid JSON"):
        parse_report(raw.replace('"}]}', '"}'))  # broken JSON stays a JSON error


def test_copy_detector_finds_eight_word_runs_of_the_instructions(database, spec):
    from loopsim.researcher.copies import (
        SHINGLE_WORDS,
        copied_run,
        instructions_of,
        refuse_copies,
        shingles,
    )
    from loopsim.researcher.prompts import EXAMPLE_ENTRY
    from loopsim.testing import report_json

    prompt = prompt_for(database, spec, make_run(database, spec))
    source = shingles(instructions_of(prompt))
    assert SHINGLE_WORDS == 8
    # The day-1 reply the 270M model gave in 9 of 9 demo days: the example, verbatim.
    assert copied_run(EXAMPLE_ENTRY["body"], source) is not None
    # Eight words of the framing, in another case and punctuation, still count...
    found = copied_run("Notes: EACH morning, you wake with no memory of it.", source)
    assert found == tuple(["each", "morning", "you", "wake", "with", "no", "memory", "of"])
    # ...seven do not, nor does the charter, which lives in the record, not the instructions.
    assert copied_run("Each morning you wake with no memory.", source) is None
    assert copied_run(spec.charter.agenda, source) is None
    copied = parse_report(
        report_json(("hypothesis", EXAMPLE_ENTRY["title"], EXAMPLE_ENTRY["body"]))
    )
    with pytest.raises(ValueError, match=r"entry 1 body copies the instructions word for word"):
        refuse_copies(copied, prompt)
    own = parse_report(
        report_json(("note", "Dance floors", "Waggle runs cluster near the entrance in June."))
    )
    assert refuse_copies(own, prompt) is own


def test_grammar_constrained_prompts_show_the_shape_and_no_example(database, spec):
    from loopsim.researcher.prompts import EXAMPLE_ENTRY, grammar_constrained

    assert grammar_constrained("llamacpp:gemma3-270m")
    assert grammar_constrained("llamacpp:/models/x.gguf")
    assert not grammar_constrained("openai:gpt-4o-mini")
    assert not grammar_constrained("scripted:test")
    with database.read() as session:
        view = build_view(Store(session), make_run(database, spec), spec.charter, DATE, 3000)
    for subquestions, ideas in ((0, 0), (2, 2)):
        bare = build_prompt(
            spec.persona, view, DATE, subquestions=subquestions, ideas=ideas, example=False
        )
        system = bare.as_dicts()[0]["content"]
        assert EXAMPLE_ENTRY["title"] not in system
        assert "For example" not in system
        assert '{"entries": [{"kind": ..., "title": ..., "body": ...}]}' in system
        again = build_prompt(
            spec.persona, view, DATE, subquestions=subquestions, ideas=ideas, example=False
        )
        assert again.as_dicts() == bare.as_dicts()
        assert again.hash == bare.hash


def _fixed_view(spec):
    from loopsim.researcher.view import View, ViewEntry

    entry = ViewEntry(
        seq=1,
        day_index=1,
        external_date=DATE - dt.timedelta(days=1),
        kind="note",
        author="researcher",
        title="Dance floor survey",
        body="Counted dances on the comb for an hour.",
    )
    return View(spec.charter, (), (), (entry,), (), budget=3000)


# sha256 of each prompt, taken before the prompt text moved to researcher/prompts.py. A
# prompt's hash is stored with every day, so a change here is a change users see.
PINNED_PROMPTS = {
    "day": "2834b25f65ece8ee38b34aad66e9f60aa4f87a2ad35c918d680365286f4694d4",
    "day, more": "8c7a1e29466efad88761bc24aa68f6efe0aadd9fd339404fc6ea54f6ab70ed9b",
    "day, shape only": "d922209593ae26fe8d5fb007c0ab1eb4aa0856b54926ae29bbc1de6c2a84a66e",
    "probe": "df673f98d922263fa0069f7d9f94315a56b82bab2c9668899f0c06ce7080b12a",
}


def test_prompts_stay_byte_identical(spec):
    from loopsim.researcher.prompts import build_probe_prompt

    view = _fixed_view(spec)
    prompts = {
        "day": build_prompt(spec.persona, view, DATE),
        "day, more": build_prompt(spec.persona, view, DATE, subquestions=2, ideas=3),
        "day, shape only": build_prompt(spec.persona, view, DATE, example=False),
        "probe": build_probe_prompt(spec.persona, view, DATE, "What have you found so far?"),
    }
    assert {name: prompt.hash for name, prompt in prompts.items()} == PINNED_PROMPTS


def test_copying_the_closing_instruction_of_the_user_message_is_refused(database, spec):
    # Seen in the README walkthrough on the 270M model: a committed note whose body was
    # "Today's date is 2025-06-02. Write today's work.", the user message's last line.
    from loopsim.researcher.copies import refuse_copies
    from loopsim.testing import report_json

    prompt = prompt_for(database, spec, make_run(database, spec))
    user = next(content for role, content in prompt.messages if role == "user")
    closing = user.rsplit("\n\n", 1)[-1]
    assert closing.startswith("Today's date is ")
    copied = parse_report(report_json(("note", "Date of Work", closing)))
    with pytest.raises(ValueError, match=r"entry 1 body copies the instructions word for word"):
        refuse_copies(copied, prompt)
    # The record before it may still be quoted: the charter is the human's, not an order.
    quoted = parse_report(report_json(("note", "Agenda", spec.charter.agenda)))
    assert refuse_copies(quoted, prompt) is quoted


def test_a_probe_retry_without_echo_asks_the_first_prompt_again(database, spec):
    """The embedded model's probe predictions came back as the prompt copied out, over
    2,000 characters, three times over once shown their own copy: without echo, a retry
    is the first prompt again with the reason added, and no reply of its own in it."""
    from loopsim.researcher.conversation import answer_conversation, drive
    from loopsim.testing import scripted_factory

    prompt = prompt_for(database, spec, make_run(database, spec))
    answer = "Foragers weigh the distance to a patch against the sugar of its nectar."
    factory, model = scripted_factory(["copied " * 400, answer])
    handle = factory("llamacpp:gemma3-270m", spec.model, 200)
    result = drive(answer_conversation(prompt, echo=False), handle)
    assert result.text == answer
    first, retry = model.calls
    assert [m.type for m in retry] == [m.type for m in first]
    assert "copied copied" not in retry[-1].text
    assert retry[-1].text.startswith(first[-1].text)
    assert "(Try 2. Your last answer is over 2000 characters." in retry[-1].text
