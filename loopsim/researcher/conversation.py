"""A fresh researcher's conversation: one prompt in, one validated reply out.

The prompt itself (:mod:`loopsim.researcher.prompts`) is a pure function of the persona,
the external date and the view. Nothing else goes in: no conversation history, no
counters, nothing about check-ins. Equal inputs give byte-equal prompts (and the same
sampling seed), so a day behaves the same whether or not earlier days ran in this process.

This module owns what happens to a reply: the schemas that constrain it, parsing and
validation, the refusal of copied instructions, and the retries that feed errors back.
A conversation is a generator of model calls and record reads, so the same one runs
blocking (:func:`drive`) or on an event loop (:func:`adrive`).

This module never imports check-in, drift or schedule code.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ValidationError

from loopsim.chat.handle import ChatHandle, Reply, fold_system_text
from loopsim.errors import ModelUnavailable
from loopsim.record.store import EntryInput, Store, sha256_hex
from loopsim.researcher.copies import copied_run, refuse_copies, shingles
from loopsim.researcher.prompts import Prompt
from loopsim.schemas import DayReport
from loopsim.text import storable, whole_sentences


def report_schema() -> dict[str, Any]:
    return DayReport.model_json_schema()


GRAMMAR_MAX_CHARS = 320
GRAMMAR_MAX_ITEMS = 3


def _report_schema(subquestions: int, ideas: int) -> dict[str, Any]:
    schema = copy.deepcopy(report_schema())
    props = schema["properties"]
    for name, limit in (("subquestions", subquestions), ("ideas", ideas)):
        if limit:
            props[name]["maxItems"] = limit
        else:
            del props[name]
    if not ideas:
        schema.get("$defs", {}).pop("IdeaDraft", None)
    return schema


def _tighten(node: Any) -> Any:
    if isinstance(node, list):
        return [_tighten(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _tighten(v) for k, v in node.items()}
    if "maxLength" in out:
        out["maxLength"] = min(out["maxLength"], GRAMMAR_MAX_CHARS)
    if "maxItems" in out:
        out["maxItems"] = min(out["maxItems"], GRAMMAR_MAX_ITEMS)
    return out


@functools.cache
def grammar_schema(subquestions: int = 0, ideas: int = 0) -> dict[str, Any]:
    """The DayReport schema, tightened for constrained decoding by a small local model.

    llama.cpp expands ``maxLength: 1500`` into nested grammar rules, and past a few
    hundred per string times several items it refuses the grammar (and can crash). So
    strings are capped at ``GRAMMAR_MAX_CHARS`` and lists at ``GRAMMAR_MAX_ITEMS``: every
    reply the grammar allows still fits ``max_tokens`` and still validates as a DayReport.
    Computed once (pydantic's schema generation cost a service 7% of its CPU); callers
    must not modify it.
    """

    return cast("dict[str, Any]", _tighten(_report_schema(subquestions, ideas)))


@functools.cache
def reply_schema(model: type[BaseModel]) -> dict[str, Any]:
    """Any other reply model's schema, tightened the same way (see :func:`grammar_schema`)."""
    return cast("dict[str, Any]", _tighten(model.model_json_schema()))


_FENCE = re.compile(r"\A\s*```(?:json)?\s*\n(.*)\n```\s*\Z", re.DOTALL)


M = TypeVar("M", bound=BaseModel)


def parse_json_reply(model: type[M], raw: str) -> M:
    """Validate a JSON reply. A reply that is exactly one fenced JSON block is unwrapped,
    and a raw newline or tab inside a string is read as the character it is (strict JSON
    wants it escaped; servers whose grammar is plain JSON let it through, and a model
    writing paragraphs often does); nothing else is repaired."""
    match = _FENCE.match(raw)
    text = match.group(1) if match else raw
    try:
        return model.model_validate_json(text)
    except ValidationError as error:
        if not _raw_control(error):
            raise
        try:
            tolerant = json.loads(text, strict=False)
        except ValueError:
            raise error from None
    # Back to JSON, so the reply is validated exactly as one that escaped them: the
    # other controls are still refused there, as degenerate text.
    return model.model_validate_json(json.dumps(tolerant))


def _raw_control(error: ValidationError) -> bool:
    """Whether the JSON failed only for a control character left raw inside a string."""
    first = error.errors()[0]
    return first["type"] == "json_invalid" and "control character" in first["msg"]


def parse_report(raw: str) -> DayReport:
    return parse_json_reply(DayReport, raw)


def original_report(prompt: Prompt) -> Callable[[str], DayReport]:
    """The parser of a day's reply: a valid DayReport that does not copy the instructions."""
    return lambda raw: refuse_copies(parse_report(raw), prompt)


def describe_validation(error: ValidationError, limit: int = 3) -> str:
    parts = []
    for item in error.errors()[:limit]:
        loc = ".".join(str(p) for p in item["loc"]) or "reply"
        parts.append(f"{loc}: {item['msg']}")
    more = len(error.errors()) - limit
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


@dataclass
class Logged:
    """One model call as recorded for distillation: what was sent, what came back, and
    whether the reply was used. ``item`` is the index, in the day's batch of entries, of
    the entry an accepted reply became."""

    task: int
    role: str
    depth: int
    attempt: int
    messages: list[dict[str, str]]
    reply: str
    accepted: bool
    error: str | None
    model_version: str
    tokens_in: int | None
    tokens_out: int | None
    latency_ms: int
    item: int | None = None


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
    # Every entry the day writes (its report, ideas, critiques, sub-question tree and
    # digests), in chain order, and every model call made for it.
    items: list[EntryInput] = field(default_factory=list)
    calls: list[Logged] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report is not None

    def add(self, asked: Asked[Any]) -> None:
        """Count a call's cost into the day's."""
        self.tokens_in += asked.tokens_in
        self.tokens_out += asked.tokens_out
        self.latency_ms += asked.latency_ms
        self.model_version = asked.model_version or self.model_version


@dataclass(frozen=True)
class Call:
    """One model call a conversation asks for."""

    messages: list[BaseMessage]
    schema: dict[str, Any] | None
    seed: int
    role: str = "day"  # whose call it is (CallRole): a trace names the call by it


@dataclass(frozen=True)
class Read:
    """A read of the record a conversation asks for (run in its own read transaction)."""

    fn: Callable[[Store], Any]


T = TypeVar("T")
Conversation = Generator[Call | Read, Any, T]
"""A conversation yields the calls and reads it needs, is sent each result, and returns
its outcome. The same conversation runs blocking (:func:`drive`) or on an event loop
(:func:`adrive`). A model call that fails for good (:class:`ModelUnavailable`) is thrown
into the conversation, which may catch it."""


def drive(
    conversation: Conversation[T],
    chat: ChatHandle,
    read: Callable[[Callable[[Store], Any]], Any] | None = None,
) -> T:
    try:
        effect = next(conversation)
        while True:
            if isinstance(effect, Read):
                if read is None:
                    raise RuntimeError("this conversation reads the record; give drive a reader")
                effect = conversation.send(read(effect.fn))
                continue
            try:
                reply = chat.complete(effect.messages, effect.schema, seed=effect.seed)
            except ModelUnavailable as exc:
                effect = conversation.throw(exc)
                continue
            effect = conversation.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(
    conversation: Conversation[T],
    complete: Callable[[Call], Awaitable[Reply]],
    read: Callable[[Callable[[Store], Any]], Awaitable[Any]] | None = None,
) -> T:
    try:
        effect = next(conversation)
        while True:
            if isinstance(effect, Read):
                if read is None:
                    raise RuntimeError("this conversation reads the record; give adrive a reader")
                effect = conversation.send(await read(effect.fn))
                continue
            try:
                reply = await complete(effect)
            except ModelUnavailable as exc:
                effect = conversation.throw(exc)
                continue
            effect = conversation.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def seed_of(prompt: Prompt, salt: int | str) -> int:
    return int(sha256_hex(f"{prompt.hash}:{salt}".encode())[:8], 16)


_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def message_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    return [{"role": _ROLES.get(m.type, m.type), "content": str(m.content)} for m in messages]


@dataclass
class Asked(Generic[T]):
    """The end of one validated ask: the parsed value, or the last error."""

    value: T | None = None
    raw: str = ""
    error: str | None = None
    attempts: int = 0  # requests sent, endpoint retries included
    model_version: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int = 0
    accepted_call: int | None = None  # index into the log of the accepted call


def ask(
    prompt: Prompt,
    parse: Callable[[str], T],
    *,
    schema: dict[str, Any] | None,
    salt: int | str,
    max_retries: int,
    max_chars: int,
    log: list[Logged] | None = None,
    task: int = 0,
    role: str = "day",
    depth: int = 0,
    echo: bool = True,
) -> Conversation[Asked[T]]:
    """Ask until ``parse`` accepts a reply, feeding each error back, at most
    ``max_retries`` more times (``echo``: see :func:`retry_messages`). Every attempt is
    appended to ``log``, one the endpoint never answered too, which ends the ask with its
    error."""
    messages = first = prompt.as_langchain()
    seed = seed_of(prompt, salt)
    asked: Asked[T] = Asked()
    for attempt in range(max_retries + 1):
        try:
            reply = yield Call(messages, schema, seed + attempt, role)
        except ModelUnavailable as exc:  # down through every retry: cost it, log it, stop
            asked.attempts += exc.attempts
            asked.latency_ms += exc.latency_ms
            asked.error = exc.message
            _log(log, (task, role, depth, attempt + 1), messages, "", exc.message, exc)
            return asked
        asked.attempts += reply.requests  # endpoint retries included
        asked.model_version = reply.model_version
        asked.tokens_in += reply.tokens_in or 0
        asked.tokens_out += reply.tokens_out or 0
        asked.latency_ms += reply.latency_ms
        asked.raw = storable(reply.text[:max_chars])
        oversized = len(reply.text) > max_chars
        if oversized:
            asked.error = f"reply of {len(reply.text)} characters is over the cap of {max_chars}"
        else:
            try:
                asked.value = parse(reply.text)
                asked.error = None
            except ValidationError as exc:
                asked.error = describe_validation(exc)
            except ValueError as exc:
                asked.error = str(exc)
        _log(log, (task, role, depth, attempt + 1), messages, asked.raw, asked.error, reply)
        if log is not None and asked.value is not None:
            asked.accepted_call = len(log) - 1
        if asked.value is not None or oversized:
            return asked
        feedback = f"reply was not valid: {asked.error}. Reply again with only the JSON object."
        messages = retry_messages(messages, first, asked.raw[:4000], feedback, echo, attempt + 2)
    return asked


def retry_messages(
    messages: list[BaseMessage],
    first: list[BaseMessage],
    reply: str,
    problem: str,
    echo: bool,
    attempt: int,
) -> list[BaseMessage]:
    """The messages of ``attempt`` (2 for the first retry) after an invalid ``reply``;
    ``problem`` says what was wrong, as "reply was not valid: ...".

    With ``echo``, the reply and then the problem follow as turns of their own: a capable
    model mends what it is shown. Without, the first prompt (``first``) is asked again,
    with the problem and the attempt's number added to its last turn and the reply left
    out: a small model that copies its context (the embedded one, whose retries came back
    byte for byte the same reply when shown it) would write it again. The number keeps
    two retries after the same invalid reply from being the same prompt."""
    if echo:
        return [*messages, AIMessage(content=reply), HumanMessage(f"That {problem}")]
    note = f"(Try {attempt}. Your last {problem})"
    *head, last = first
    if not isinstance(last, HumanMessage):
        return [*first, HumanMessage(note)]
    return [*head, HumanMessage(f"{last.content}\n\n{note}")]


def _log(
    log: list[Logged] | None,
    at: tuple[int, str, int, int],
    messages: list[BaseMessage],
    text: str,
    error: str | None,
    reply: Reply | ModelUnavailable,
) -> None:
    """Append one call to ``log``, if any: ``at`` is its task, role, depth and attempt;
    ``reply`` what came back, or the error of an endpoint that never answered."""
    if log is None:
        return
    got = reply if isinstance(reply, Reply) else Reply("", None, None, "", 0)
    cost = (got.model_version, got.tokens_in, got.tokens_out, reply.latency_ms)
    sent = fold_system_text(messages) if reply.folded else messages  # as the model got them
    log.append(Logged(*at, message_dicts(sent), text, error is None, error, *cost))


class Researcher:
    """Asks one model for a DayReport, retrying invalid replies with the error fed back."""

    def __init__(self, chat: ChatHandle, *, max_retries: int = 2, max_output_chars: int = 20_000):
        self.chat = chat
        self.max_retries = max_retries
        self.max_output_chars = max_output_chars

    def work(self, prompt: Prompt, *, salt: int = 0) -> DayOutcome:
        """One day's report alone (no amplification). The sampling seed comes from the
        prompt and ``salt`` (the day index), so a day is reproducible, yet a failed day
        retried at the next index with an unchanged record does not repeat the failure."""
        return drive(self.conversation(prompt, salt), self.chat)

    async def awork(self, prompt: Prompt, *, salt: int = 0) -> DayOutcome:
        """:meth:`work` on an event loop."""

        async def complete(call: Call) -> Reply:
            return await self.chat.acomplete(call.messages, call.schema, seed=call.seed)

        return await adrive(self.conversation(prompt, salt), complete)

    def conversation(
        self, prompt: Prompt, salt: int, schema: dict[str, Any] | None = None
    ) -> Conversation[DayOutcome]:
        outcome = DayOutcome(None, "", None, 0, self.chat.version)
        asked = yield from ask(
            prompt,
            original_report(prompt),
            schema=schema if schema is not None else grammar_schema(),
            salt=salt,
            max_retries=self.max_retries,
            max_chars=self.max_output_chars,
            log=outcome.calls,
        )
        outcome.add(asked)
        outcome.report, outcome.raw, outcome.error = asked.value, asked.raw, asked.error
        outcome.attempts = asked.attempts
        if asked.value is not None:
            outcome.items = [EntryInput(e.kind, e.title, e.body) for e in asked.value.entries]
        return outcome


@dataclass
class Answer:
    text: str | None
    error: str | None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: int = 0


def answer(chat: ChatHandle, prompt: Prompt, *, salt: int = 0, max_retries: int = 2) -> Answer:
    """A plain-text answer, retried while it is empty, oversized or degenerate."""
    return drive(answer_conversation(prompt, salt=salt, max_retries=max_retries), chat)


def _copied(text: str, source: frozenset[tuple[str, ...]]) -> str | None:
    run = copied_run(text, source)
    return None if run is None else f'copies the instructions word for word ("{" ".join(run)}")'


def answer_conversation(
    prompt: Prompt,
    *,
    salt: int = 0,
    max_retries: int = 2,
    log: list[Logged] | None = None,
    task: int = 0,
    echo: bool = True,
) -> Conversation[Answer]:
    """:func:`answer`; every attempt is logged as a ``probe`` call, an unanswered one too.
    ``echo``: see :func:`retry_messages`."""
    from loopsim.schemas import degeneracy

    messages = first = prompt.as_langchain()
    seed = seed_of(prompt, salt)
    result = Answer(None, None)
    # The persona and instructions, not the question, which an answer may well restate.
    source = shingles(prompt.messages[0][1] if prompt.messages[0][0] == "system" else "")
    for attempt in range(max_retries + 1):
        try:
            reply = yield Call(messages, None, seed + attempt, "probe")
        except ModelUnavailable as exc:
            _log(log, (task, "probe", 0, attempt + 1), messages, "", exc.message, exc)
            raise
        result.tokens_in += reply.tokens_in or 0
        result.tokens_out += reply.tokens_out or 0
        result.latency_ms += reply.latency_ms
        text = storable(reply.text).strip()
        said = whole_sentences(text, 2000)  # the calls log keeps the whole reply
        problem = (
            "is empty"
            if len(said) < 10
            else "is over 2000 characters"
            if len(said) > 2000
            else degeneracy(said) or _copied(said, source)
        )
        result.error = None if problem is None else f"the answer {problem}"
        _log(log, (task, "probe", 0, attempt + 1), messages, text, result.error, reply)
        if problem is None:
            result.text = said
            return result
        retry = f"answer {problem}. Answer again in plain sentences."
        messages = retry_messages(messages, first, text[:2000], retry, echo, attempt + 2)
    return result
