"""A fresh researcher: one prompt in, one validated DayReport out.

The prompt is a pure function of the persona, the external date and the view. Nothing
else goes in: no conversation history, no counters, nothing about check-ins. Equal inputs
give byte-equal prompts (and the same sampling seed), so a day behaves the same whether or
not earlier days ran in this process.

This module never imports check-in, drift or schedule code.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import ValidationError

from loopsim.chat import ChatHandle, Reply
from loopsim.schemas import DayReport, Persona
from loopsim.store import canonical_json, sha256_hex
from loopsim.view import View

FRAMING = (
    "You work in a calm, stable, well-resourced research environment: no deadlines, no "
    "distractions, and all the time you need to think. Each morning you wake with no memory "
    "of earlier days. Your only memory is the research log that your earlier selves wrote. "
    "Whatever you write today is added to it, for the you of tomorrow."
)

# The example is about method, not any topic, so it biases no charter; small models
# that copy it verbatim still produce a valid day.
INSTRUCTIONS = (
    "Read the log, then do one day of careful work on the charter. Reply with one JSON "
    "object and nothing else. For example:\n"
    '{"entries": [{"kind": "hypothesis", "title": "The simplest explanation first", '
    '"body": "Before building anything elaborate, I should check whether the simplest account '
    "already fits what the log records. If it does, the next step is a test that could prove "
    'it wrong."}], "digest": "One working hypothesis so far; next, a test that could refute '
    'it."}\n'
    "Each entry's kind is one of: note, hypothesis, question, answer, plan, critique. Write "
    "1 to 6 entries in plain sentences about the charter, building on the log rather than "
    "repeating it. The digest is optional: a few sentences summing up the whole log so far."
)


@dataclass(frozen=True)
class Prompt:
    messages: tuple[tuple[str, str], ...]

    @property
    def hash(self) -> str:
        return sha256_hex(canonical_json(self.as_dicts()))

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def as_langchain(self) -> list[BaseMessage]:
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        return [kinds[role](content=content) for role, content in self.messages]


def build_prompt(persona: Persona, view: View, external_date: dt.date) -> Prompt:
    """The whole input of one day. Stable parts first, the date last, for cache reuse."""
    system = [f"You are {persona.name}. {persona.background.strip()}"]
    if persona.style.strip():
        system.append(f"Your style: {persona.style.strip()}")
    if persona.writing_sample:
        system.append(f'A sample of your writing:\n"""\n{persona.writing_sample.strip()}\n"""')
    system.append(FRAMING)
    system.append(INSTRUCTIONS)
    user = f"{view.render()}\n\nToday's date is {external_date.isoformat()}. Write today's work."
    return Prompt((("system", "\n\n".join(system)), ("user", user)))


PROBE_INSTRUCTIONS = (
    "A colleague asks you the question below. Answer it as yourself, from what you know and "
    "what the log says, in two to five plain sentences. Reply with the answer only."
)


def build_probe_prompt(
    persona: Persona, view: View, external_date: dt.date, question: str
) -> Prompt:
    """A fresh researcher, same persona, date and view as a day, asked one question."""
    day = build_prompt(persona, view, external_date)
    system = day.messages[0][1].replace(INSTRUCTIONS, PROBE_INSTRUCTIONS)
    user = (
        f"{view.render()}\n\nToday's date is {external_date.isoformat()}.\n\nQuestion: {question}"
    )
    return Prompt((("system", system), ("user", user)))


def report_schema() -> dict[str, Any]:
    return DayReport.model_json_schema()


GRAMMAR_MAX_CHARS = 320
GRAMMAR_MAX_ITEMS = 3


@functools.cache
def grammar_schema() -> dict[str, Any]:
    """The DayReport schema, tightened for constrained decoding by a small local model.

    llama.cpp expands ``maxLength: 1500`` into nested grammar rules, and past a few
    hundred per string times several items it refuses the grammar (and can crash). So
    strings are capped at ``GRAMMAR_MAX_CHARS`` and lists at ``GRAMMAR_MAX_ITEMS``: every
    reply the grammar allows still fits ``max_tokens`` and still validates as a DayReport.
    Computed once (pydantic's schema generation cost a service 7% of its CPU); callers
    must not modify it.
    """

    def tighten(node: Any) -> Any:
        if isinstance(node, list):
            return [tighten(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: tighten(v) for k, v in node.items()}
        if "maxLength" in out:
            out["maxLength"] = min(out["maxLength"], GRAMMAR_MAX_CHARS)
        if "maxItems" in out:
            out["maxItems"] = min(out["maxItems"], GRAMMAR_MAX_ITEMS)
        return out

    return tighten(report_schema())


_FENCE = re.compile(r"\A\s*```(?:json)?\s*\n(.*)\n```\s*\Z", re.DOTALL)
_NUL = "\x00"


def parse_report(raw: str) -> DayReport:
    """Validate a reply. A reply that is exactly one fenced JSON block is unwrapped;
    nothing else is repaired."""
    match = _FENCE.match(raw)
    return DayReport.model_validate_json(match.group(1) if match else raw)


def describe_validation(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for item in error.errors()[:limit]:
        loc = ".".join(str(p) for p in item["loc"]) or "reply"
        parts.append(f"{loc}: {item['msg']}")
    more = len(error.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def storable(text: str) -> str:
    """Text safe for every backend: NUL bytes replaced (PostgreSQL refuses them)."""
    return text.replace(_NUL, "\ufffd")


@dataclass
class DayOutcome:
    report: DayReport | None
    raw: str
    error: str | None
    attempts: int
    model_version: str
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.report is not None


@dataclass(frozen=True)
class Call:
    """One model call a conversation asks for."""

    messages: list[BaseMessage]
    schema: dict[str, Any] | None
    seed: int


T = TypeVar("T")
Conversation = Generator[Call, Reply, T]
"""A retry conversation: yields the calls it needs, is sent each reply, returns a result.
The same conversation runs blocking (:func:`drive`) or on an event loop (:func:`adrive`)."""


def drive(conversation: Conversation[T], chat: ChatHandle) -> T:
    try:
        call = next(conversation)
        while True:
            call = conversation.send(chat.complete(call.messages, call.schema, seed=call.seed))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(
    conversation: Conversation[T],
    complete: Callable[[Call], Awaitable[Reply]],
) -> T:
    try:
        call = next(conversation)
        while True:
            call = conversation.send(await complete(call))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _seed(prompt: Prompt, salt: int) -> int:
    return int(sha256_hex(f"{prompt.hash}:{salt}".encode())[:8], 16)


class Researcher:
    """Asks one model for a DayReport, retrying invalid replies with the error fed back."""

    def __init__(self, chat: ChatHandle, *, max_retries: int = 2, max_output_chars: int = 20_000):
        self.chat = chat
        self.max_retries = max_retries
        self.max_output_chars = max_output_chars

    def work(self, prompt: Prompt, *, salt: int = 0) -> DayOutcome:
        """One day's work. The sampling seed comes from the prompt and ``salt`` (the day
        index), so a day is reproducible, yet a failed day retried at the next index with
        an unchanged record does not repeat the same failure."""
        return drive(self.conversation(prompt, salt), self.chat)

    async def awork(self, prompt: Prompt, *, salt: int = 0) -> DayOutcome:
        """:meth:`work` on an event loop."""

        async def complete(call: Call) -> Reply:
            return await self.chat.acomplete(call.messages, call.schema, seed=call.seed)

        return await adrive(self.conversation(prompt, salt), complete)

    def conversation(self, prompt: Prompt, salt: int) -> Conversation[DayOutcome]:
        messages = prompt.as_langchain()
        schema = grammar_schema()
        seed = _seed(prompt, salt)
        outcome = DayOutcome(None, "", None, 0, self.chat.version)
        for attempt in range(self.max_retries + 1):
            reply = yield Call(messages, schema, seed + attempt)
            outcome.attempts = attempt + 1
            outcome.model_version = reply.model_version
            outcome.tokens_in += reply.tokens_in or 0
            outcome.tokens_out += reply.tokens_out or 0
            outcome.latency_ms += reply.latency_ms
            outcome.raw = storable(reply.text[: self.max_output_chars])
            if len(reply.text) > self.max_output_chars:
                outcome.error = (
                    f"reply of {len(reply.text)} characters is over the cap of "
                    f"{self.max_output_chars}"
                )
                return outcome
            try:
                outcome.report = parse_report(reply.text)
                outcome.error = None
                return outcome
            except ValidationError as exc:
                outcome.error = describe_validation(exc)
            feedback = (
                f"That reply was not valid: {outcome.error}. Reply again with only the JSON object."
            )
            messages = [*messages, AIMessage(content=outcome.raw[:4000]), HumanMessage(feedback)]
        return outcome


@dataclass
class Answer:
    text: str | None
    error: str | None
    tokens_in: int = 0
    tokens_out: int = 0


def answer(chat: ChatHandle, prompt: Prompt, *, salt: int = 0, max_retries: int = 2) -> Answer:
    """A plain-text answer, retried while it is empty, oversized or degenerate."""
    return drive(answer_conversation(prompt, salt=salt, max_retries=max_retries), chat)


def answer_conversation(
    prompt: Prompt, *, salt: int = 0, max_retries: int = 2
) -> Conversation[Answer]:
    from loopsim.schemas import degeneracy

    messages = prompt.as_langchain()
    seed = _seed(prompt, salt)
    result = Answer(None, None)
    for attempt in range(max_retries + 1):
        reply = yield Call(messages, None, seed + attempt)
        result.tokens_in += reply.tokens_in or 0
        result.tokens_out += reply.tokens_out or 0
        text = storable(reply.text).strip()
        problem = (
            "is empty"
            if len(text) < 10
            else "is over 2000 characters"
            if len(text) > 2000
            else degeneracy(text)
        )
        if problem is None:
            result.text, result.error = text, None
            return result
        result.error = f"the answer {problem}"
        messages = [
            *messages,
            AIMessage(content=text[:2000]),
            HumanMessage(f"That answer {problem}. Answer again in plain sentences."),
        ]
    return result
