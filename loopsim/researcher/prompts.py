"""What a fresh researcher is shown: the prompt text, and the builders that assemble it.

A prompt is a pure function of the persona, the conditional (the spec's ``[conditional]``:
the environment the researcher is told it works in), the external date and the view (and,
for a probe, the question). Equal inputs give byte-equal prompts, hence equal prompt hashes in
the record: change a word here and every later day's prompt hash changes with it.

This module never imports check-in, drift or schedule code.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from loopsim.record.store import canonical_json, sha256_hex
from loopsim.researcher.view import View
from loopsim.schemas import DEFAULT_FRAMING, Conditional, Persona

# The framing of a spec with no [conditional] section: every run before it was configurable.
FRAMING = DEFAULT_FRAMING
DEFAULT_CONDITIONAL = Conditional()

# The example is about method, not any topic, so it biases no charter. Only models whose
# decoding is not held to the schema see it (see :func:`grammar_constrained`): the embedded
# 270M model copied any example word for word, and its grammar already gives it the shape.
# A reply that copies the instructions is refused either way (researcher/copies.py).
EXAMPLE_ENTRY = {
    "kind": "hypothesis",
    "title": "The simplest explanation first",
    "body": "Before building anything elaborate, I should check whether the simplest account "
    "already fits what the log records. If it does, the next step is a test that could prove "
    "it wrong.",
}
EXAMPLE_SUBQUESTION = "Which observation in the log would most directly test the simplest account?"
EXAMPLE_IDEA = {
    "title": "Test the simplest account first",
    "body": "Pick the one measurement the simplest account predicts most clearly, and make it "
    "before anything more elaborate.",
}
INSTRUCTIONS = (
    "Read the log, then do one day of careful work on the charter. Reply with one JSON "
    "object and nothing else. {example}\n"
    "Each entry's kind is one of: note, hypothesis, question, answer, plan, critique. Write "
    "1 to 6 entries in plain sentences about the charter, building on the log rather than "
    "repeating it."
)
SUBQUESTION_INSTRUCTIONS = (
    'You may also add "subquestions": a list of up to {n} short, self-contained questions. '
    "Each is handed to a fresh copy of you with the same log, who answers it today; the "
    "answers are added to the log."
)
IDEA_INSTRUCTIONS = (
    'Also add "ideas": a list of 1 to {n} candidate ideas, each with a "title" and a '
    '"body". A colleague will critique each one; the most promising are kept.'
)


# What a grammar-constrained model is shown instead of an example: the shape, no words.
SHAPE = (
    'Its shape: {"entries": [{"kind": ..., "title": ..., "body": ...}]}, with your own '
    "words in every title and body."
)


def grammar_constrained(model_id: str) -> bool:
    """Whether this model's decoding is held to the reply's JSON schema by a grammar (the
    embedded llama.cpp path), so that its prompt needs no example reply."""
    return model_id.partition(":")[0].strip().lower() == "llamacpp"


def shape_held(model_id: str, response_format: str) -> bool:
    """Whether a grammar holds the reply to its schema, so that the prompt shows the shape
    and no example (a small model copies an example word for word): the embedded model,
    and an OpenAI-compatible server asked with ``json_object`` and the schema
    (llama-cpp-python's server, which makes a grammar of it)."""
    provider = model_id.partition(":")[0].strip().lower()
    return grammar_constrained(model_id) or (
        provider == "openai" and response_format == "json_object"
    )


def echoes(model_id: str) -> bool:
    """Whether a retry shows this model its invalid reply (see
    :func:`loopsim.researcher.conversation.retry_messages`): not the embedded model, which
    copies what its context holds and sent the same invalid reply back each time."""
    return not grammar_constrained(model_id)


def example_reply(subquestions: int = 0, ideas: int = 0) -> str:
    """The example reply the instructions show, with the optional parts the day may use."""
    example: dict[str, Any] = {"entries": [EXAMPLE_ENTRY]}
    if subquestions:
        example["subquestions"] = [EXAMPLE_SUBQUESTION]
    if ideas:
        example["ideas"] = [EXAMPLE_IDEA]
    return json.dumps(example)


@dataclass(frozen=True)
class Prompt:
    messages: tuple[tuple[str, str], ...]

    @functools.cached_property
    def hash(self) -> str:
        """SHA-256 of the messages' canonical JSON: computed once, as the messages of a
        frozen prompt never change (a day asks for it for its seed, its day row and every
        entry)."""
        return sha256_hex(canonical_json(self.as_dicts()))

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def as_langchain(self) -> list[BaseMessage]:
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        return [kinds[role](content=content) for role, content in self.messages]


def persona_text(persona: Persona, conditional: Conditional = DEFAULT_CONDITIONAL) -> list[str]:
    """Who the researcher is, then the world it is told it works in. An empty framing
    adds no paragraph at all."""
    system = [f"You are {persona.name}. {persona.background.strip()}"]
    if persona.style.strip():
        system.append(f"Your style: {persona.style.strip()}")
    if persona.writing_sample:
        system.append(f'A sample of your writing:\n"""\n{persona.writing_sample.strip()}\n"""')
    if conditional.framing:
        system.append(conditional.framing)
    return system


def build_prompt(
    persona: Persona,
    view: View,
    external_date: dt.date,
    *,
    subquestions: int = 0,
    ideas: int = 0,
    example: bool = True,
    conditional: Conditional = DEFAULT_CONDITIONAL,
) -> Prompt:
    """The whole input of one day. Stable parts first, the date last, for cache reuse.
    ``subquestions`` and ``ideas`` are how many of each the day may pose (0: none);
    ``example`` shows an example reply (for models not held to the schema) rather than
    only its shape."""
    system = persona_text(persona, conditional)
    shown = f"For example:\n{example_reply(subquestions, ideas)}" if example else SHAPE
    instructions = [INSTRUCTIONS.format(example=shown)]
    if subquestions:
        instructions.append(SUBQUESTION_INSTRUCTIONS.format(n=subquestions))
    if ideas:
        instructions.append(IDEA_INSTRUCTIONS.format(n=ideas))
    system.append(" ".join(instructions))
    user = f"{view.render()}\n\nToday's date is {external_date.isoformat()}. Write today's work."
    return Prompt((("system", "\n\n".join(system)), ("user", user)))


PROBE_INSTRUCTIONS = (
    "A colleague asks you the question below. Answer it as yourself, from what you know and "
    "what the log says, in two to five plain sentences. Reply with the answer only."
)


def build_probe_prompt(
    persona: Persona,
    view: View,
    external_date: dt.date,
    question: str,
    conditional: Conditional = DEFAULT_CONDITIONAL,
) -> Prompt:
    """A fresh researcher, same persona, conditional, date and view as a day, asked one
    question."""
    system = "\n\n".join([*persona_text(persona, conditional), PROBE_INSTRUCTIONS])
    user = (
        f"{view.render()}\n\nToday's date is {external_date.isoformat()}.\n\nQuestion: {question}"
    )
    return Prompt((("system", system), ("user", user)))
