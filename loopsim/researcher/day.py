"""Amplification inside one day, and the day's whole conversation.

A day is one :data:`~loopsim.researcher.Conversation` that may make many model calls:

1. the day's own report (retried while invalid), which may pose *sub-questions* and
   babble *ideas*;
2. each idea, scored by a fresh *critic* (same persona and external date, no log, no
   memory), and the best ones flagged;
3. each sub-question, answered by a fresh *sub-researcher* (same persona and date, a view
   of the record focused on the question, no memory), who may pose sub-questions of its
   own, depth-first, up to the spec's depth and breadth and within its token budget;
4. the *digests* due (planned before the day from the record as it stood): a fresh
   researcher compresses the oldest uncovered days, or ``every_days`` digests of one
   level into one of the level above.

Nothing is written until the conversation ends: the loop then commits the day, every
entry of its tree and every call it made, in one transaction. A sub-question, critic or
digest call whose reply stays invalid, or whose endpoint stays down, leaves its node
unanswered and the day goes on; only the day's own report can fail the day. A digest
left unwritten is due again on later days, less and less often while it keeps failing.

This module never imports check-in, drift or schedule code.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel

from loopsim.chat.tokens import counter_for, estimate_tokens
from loopsim.errors import ModelUnavailable
from loopsim.record.store import DigestState, EntryInput, Store
from loopsim.researcher.conversation import (
    Asked,
    Conversation,
    DayOutcome,
    Read,
    ask,
    grammar_schema,
    original_report,
    parse_json_reply,
    reply_schema,
)
from loopsim.researcher.fit import fit_prompt
from loopsim.researcher.prompts import Prompt, echoes, persona_text
from loopsim.researcher.view import ViewEntry, build_view
from loopsim.schemas import (
    Author,
    CallRole,
    Critique,
    DayStatus,
    DigestReply,
    EntryKind,
    RunSpec,
    SubAnswer,
)

# The longest a digest that keeps failing waits between days that ask for it.
DIGEST_RETRY_DAYS = 16

SUB_INSTRUCTIONS = (
    "Another copy of you, working on the same charter today, hands you the question below. "
    "Answer it from what you know and what the log says. Reply with one JSON object and "
    'nothing else: {{"answer": "two to six plain sentences"{more}}}'
)
SUB_MORE = (
    ', "subquestions": ["up to {n} narrower questions you want answered first by further '
    'copies of you, or none"]'
)
CRITIC_INSTRUCTIONS = (
    "A colleague proposes the idea below for the charter. Judge it as a careful critic: is "
    "it sound, new, testable and worth the time? Reply with one JSON object and nothing "
    'else: {"score": 0 to 10, where 10 is most promising, "critique": "two to five plain '
    'sentences"}'
)
DIGEST_INSTRUCTIONS = (
    "Below are entries from the research log. Compress them into one digest for the you of "
    "later days: the findings, open questions and plans that still matter, in plain "
    "sentences, at most about 120 words. Reply with one JSON object and nothing else: "
    '{"digest": "..."}'
)


@dataclass(frozen=True)
class DigestJob:
    """One digest due today: ``level`` 1 compresses the entries of days
    ``first_day``..``last_day``; level k+1 compresses level-k digests of that range."""

    level: int
    first_day: int
    last_day: int
    material: tuple[ViewEntry, ...]


@dataclass(frozen=True)
class PlannedDay:
    run_id: str
    index: int
    external_date: dt.date
    prompt: Prompt
    model_id: str
    spec: RunSpec
    digests: tuple[DigestJob, ...] = ()
    prompt_limit: int | None = None  # most tokens any prompt of the day may take, if known
    # Earlier tries of this day that failed: each retry of a day samples afresh.
    failed_tries: int = 0
    committed_before: int = 0  # the run's committed days before it

    @property
    def last_of_budget(self) -> bool:
        """Whether committing this day spends the run's day budget."""
        return self.committed_before + 1 >= self.spec.budget.days

    @property
    def salt(self) -> int | str:
        """The day's sampling salt: its index, and for a retry also the try's number, so
        a retried day does not repeat the failure (a first try keeps the old seed)."""
        return self.index if not self.failed_tries else f"{self.index}.{self.failed_tries}"


@dataclass(frozen=True)
class DayResult:
    """A stepped day as written: committed or failed, and what it cost."""

    index: int
    status: DayStatus
    external_date: dt.date
    entries: int
    latency_ms: int
    error: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    run_failed: bool = False


def unreachable(error: ModelUnavailable, version: str) -> DayOutcome:
    """The outcome of a day whose endpoint stayed down through every retry, with what the
    failed call cost."""
    return DayOutcome(None, "", error.message, error.attempts, version, latency_ms=error.latency_ms)


def day_summary(outcome: DayOutcome) -> dict[str, Any]:
    """What a day's trace ends with: no model text, which its calls already hold."""
    return {
        "valid": outcome.ok,
        "entries": len(outcome.items),
        "calls": len(outcome.calls),
        "tokens_in": outcome.tokens_in,
        "tokens_out": outcome.tokens_out,
        "error": outcome.error,
    }


# ------------------------------------------------------------------------- planning


def plan_digests(
    store: Store,
    run_id: str,
    index: int,
    until: dt.date,
    every: int,
    state: DigestState | None = None,
) -> list[DigestJob]:
    """The digests due before day ``index``, from the record as it stands.

    Level 1: once ``every`` committed days after the last level-1 digest are older than
    today, they are compressed. Level k+1: once ``every`` level-k digests are not yet
    covered by one of level k+1, they are compressed. At most one digest a level a day,
    so a record that had digests off catches up gradually. The view keeps showing days
    as written while its budget allows (see :mod:`loopsim.researcher.view`).
    """
    if every <= 0:
        return []
    jobs: list[DigestJob] = []
    if state is None:
        state = store.digest_state(run_id, until)
    covered = state.covered.get(1, 0)
    days = store.committed_day_indexes(run_id, after=covered, before=index, limit=every)
    if len(days) >= every:
        first, last = days[0], days[every - 1]
        rows = store.committed_view_rows(run_id, (first, last))
        material = tuple(
            entry
            for entry in (ViewEntry(*row) for row in rows)
            if entry.kind not in (EntryKind.DIGEST, EntryKind.CORRECTION)
        )
        if material:
            jobs.append(DigestJob(1, first, last, material))
    for level in range(1, max(state.covered, default=0) + 1):
        above = state.covered.get(level + 1, 0)
        digests = (
            state.uncovered.get(level, [])[:every]
            if state.complete
            else store.digests(run_id, level, after_day=above, until=until, limit=every)
        )
        if len(digests) == every:
            material = tuple(ViewEntry.of(d, None) for d in digests)
            first, last = digests[0].first_day or 0, digests[-1].last_day or 0
            jobs.append(DigestJob(level + 1, first, last, material))
    return [job for job in jobs if not _backing_off(store, run_id, job, index)]


def _backing_off(store: Store, run_id: str, job: DigestJob, index: int) -> bool:
    """Whether a digest that failed on earlier days waits today: after its n-th failed
    day it is asked again 2^(n-1) days later, then every :data:`DIGEST_RETRY_DAYS` days,
    so a model that cannot write it does not pay its retries every day."""
    tried = store.digest_tries(run_id, job.level, after_day=job.last_day)
    if not tried:
        return False
    return index < tried[-1] + min(1 << (len(tried) - 1), DIGEST_RETRY_DAYS)


# ----------------------------------------------------------------------- prompts


def _system(planned: PlannedDay, instructions: str) -> str:
    return "\n\n".join(
        [*persona_text(planned.spec.persona, planned.spec.conditional), instructions]
    )


def _dated(text: str, date: dt.date) -> str:
    return f"{text}\n\nToday's date is {date.isoformat()}."


def sub_prompt(planned: PlannedDay, view_text: str, question: str, may_ask: int) -> Prompt:
    more = SUB_MORE.format(n=may_ask) if may_ask else ""
    system = _system(planned, SUB_INSTRUCTIONS.format(more=more))
    user = f"{_dated(view_text, planned.external_date)}\n\nQuestion: {question}"
    return Prompt((("system", system), ("user", user)))


def critic_prompt(planned: PlannedDay, title: str, body: str) -> Prompt:
    charter = planned.spec.charter.agenda.strip()
    user = _dated(f"# Charter\n{charter}\n\n# Idea: {title}\n{body}", planned.external_date)
    return Prompt((("system", _system(planned, CRITIC_INSTRUCTIONS)), ("user", user)))


def digest_prompt(planned: PlannedDay, job: DigestJob, budget: int) -> Prompt:
    """The digest's prompt: its material within ``budget`` tokens, and the whole prompt
    within the day's prompt limit, both as the run's model counts them."""
    counter = counter_for(planned.model_id)
    what = f"days {job.first_day} to {job.last_day}"
    if job.level > 1:
        what = f"digests of {what}"
    head = [f"# Charter\n{planned.spec.charter.agenda.strip()}", f"\n# Entries: {what}"]

    def build(room: int) -> tuple[Prompt, int]:
        lines = list(head)
        used = sum(counter.count(line) + 1 for line in lines)
        for item in job.material:
            text = item.render()
            cost = counter.count(text) + 1
            if used + cost > room:
                lines.append("(later entries left out: over the digest's budget)")
                break
            lines.append(text)
            used += cost
        user = _dated("\n".join(lines), planned.external_date)
        return Prompt((("system", _system(planned, DIGEST_INSTRUCTIONS)), ("user", user))), used

    return fit_prompt(build, counter, budget, planned.prompt_limit)


@functools.cache
def sub_schema(may_ask: int) -> dict[str, Any]:
    """SubAnswer's schema, offering ``may_ask`` sub-questions (none at the depth limit)."""
    schema = copy.deepcopy(reply_schema(SubAnswer))
    if may_ask:
        schema["properties"]["subquestions"]["maxItems"] = may_ask
    else:
        del schema["properties"]["subquestions"]
    return schema


def _title(prefix: str, text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    room = limit - len(prefix)
    return prefix + (flat if len(flat) <= room else flat[: room - 1].rstrip() + "\u2026")


def _parser(model: type[BaseModel]) -> Any:
    return functools.partial(parse_json_reply, model)


# ------------------------------------------------------------------ conversation


@dataclass
class _Day:
    planned: PlannedDay
    max_retries: int
    max_chars: int
    digest_budget: int
    outcome: DayOutcome
    tasks: int = 0
    sub_tokens: int = 0
    items: list[EntryInput] = field(default_factory=list)

    def add(self, item: EntryInput) -> int:
        self.items.append(item)
        return len(self.items) - 1

    def ask(
        self,
        prompt: Prompt,
        model: type[BaseModel],
        role: CallRole,
        depth: int,
        salt: str,
        schema: dict[str, Any] | None = None,
    ) -> Conversation[Asked[Any]]:
        self.tasks += 1
        # An endpoint down for good ends the ask with its error (ask catches it).
        asked: Asked[Any] = yield from ask(
            prompt,
            _parser(model),
            schema=schema or reply_schema(model),
            salt=f"{self.planned.salt}:{salt}",
            max_retries=self.max_retries,
            max_chars=self.max_chars,
            log=self.outcome.calls,
            task=self.tasks,
            role=role,
            depth=depth,
            echo=echoes(self.planned.model_id),
        )
        self.outcome.add(asked)
        return asked

    def link(self, asked: Asked[Any], item: int) -> None:
        if asked.accepted_call is not None:
            self.outcome.calls[asked.accepted_call].item = item


def day_conversation(
    planned: PlannedDay,
    *,
    version: str,
    max_retries: int,
    max_chars: int,
    digest_budget: int = 3000,
) -> Conversation[DayOutcome]:
    """The whole of one day: its report, then ideas, sub-questions and digests."""
    spec = planned.spec
    breadth = spec.subquestions.breadth if spec.subquestions.depth else 0
    outcome = DayOutcome(None, "", None, 0, version)
    asked = yield from ask(
        planned.prompt,
        original_report(planned.prompt),
        schema=grammar_schema(breadth, spec.babble.ideas),
        salt=planned.salt,
        max_retries=max_retries,
        max_chars=max_chars,
        log=outcome.calls,
        echo=echoes(planned.model_id),
    )
    outcome.add(asked)
    outcome.report, outcome.raw, outcome.error = asked.value, asked.raw, asked.error
    outcome.attempts = asked.attempts
    report = asked.value
    if report is None:
        return outcome
    day = _Day(planned, max_retries, max_chars, digest_budget, outcome)
    for entry in report.entries:
        day.add(EntryInput(entry.kind, entry.title, entry.body))
    if spec.babble.ideas:
        yield from _babble(day, report.ideas[: spec.babble.ideas])
    for question in report.subquestions[:breadth]:
        yield from _subquestion(day, question, depth=1, parent=None)
    for job in planned.digests:
        yield from _digest(day, job)
    outcome.items = day.items
    return outcome


def _babble(day: _Day, ideas: list[Any]) -> Conversation[None]:
    scored: list[tuple[int, int]] = []  # (score, idea item)
    for number, idea in enumerate(ideas, 1):
        at = day.add(EntryInput(EntryKind.IDEA, idea.title, idea.body, flagged=False))
        prompt = critic_prompt(day.planned, idea.title, idea.body)
        asked = yield from day.ask(prompt, Critique, CallRole.CRITIC, 1, f"critic:{number}")
        if asked.value is None:
            body = f"No critique: the critic's reply was not usable ({asked.error})."
            day.add(
                EntryInput(
                    EntryKind.CRITIQUE,
                    _title("Critique: ", idea.title),
                    body[:1500],
                    author=Author.SYSTEM,
                    parent=at,
                )
            )
            continue
        critique: Critique = asked.value
        done = day.add(
            EntryInput(
                EntryKind.CRITIQUE,
                _title("Critique: ", idea.title),
                critique.critique,
                parent=at,
                score=critique.score,
            )
        )
        day.link(asked, done)
        scored.append((critique.score, at))
    babble = day.planned.spec.babble
    best = sorted(scored, key=lambda pair: (-pair[0], pair[1]))[: babble.flag_top]
    for score, at in best:
        if score >= babble.min_score:
            day.items[at] = replace(day.items[at], flagged=True)


def _subquestion(day: _Day, question: str, *, depth: int, parent: int | None) -> Conversation[None]:
    planned = day.planned
    settings = planned.spec.subquestions
    at = day.add(EntryInput(EntryKind.SUBQUESTION, _title("", question), question, parent=parent))
    if day.sub_tokens >= settings.token_budget:
        return  # budget spent: the question stays, unanswered
    may_ask = settings.breadth if depth < settings.depth else 0
    counter = counter_for(planned.model_id)

    def build(store: Store, budget: int) -> tuple[Prompt, int]:
        view = build_view(
            store,
            planned.run_id,
            planned.spec.charter,
            planned.external_date,
            budget,
            focus=question,
            counter=counter,
        )
        return sub_prompt(planned, view.render(), question, may_ask), view.tokens

    prompt = yield Read(
        lambda store: fit_prompt(
            functools.partial(build, store),
            counter,
            settings.view_token_budget,
            planned.prompt_limit,
        )
    )
    before = day.outcome.tokens_in + day.outcome.tokens_out
    asked = yield from day.ask(
        prompt, SubAnswer, CallRole.SUBQUESTION, depth, f"sub:{at}", sub_schema(may_ask)
    )
    spent = day.outcome.tokens_in + day.outcome.tokens_out - before
    # Endpoints that report no usage still spend: count the prompt and reply by size.
    day.sub_tokens += spent or estimate_tokens(prompt.messages[1][1]) + estimate_tokens(asked.raw)
    if asked.value is None:
        return
    answer: SubAnswer = asked.value
    done = day.add(
        EntryInput(EntryKind.ANSWER, _title("Answer: ", question), answer.answer, parent=at)
    )
    day.link(asked, done)
    for child in answer.subquestions[:may_ask]:
        yield from _subquestion(day, child, depth=depth + 1, parent=done)


def _digest(day: _Day, job: DigestJob) -> Conversation[None]:
    prompt = digest_prompt(day.planned, job, day.digest_budget)
    salt = f"digest:{job.level}:{job.first_day}"
    asked = yield from day.ask(prompt, DigestReply, CallRole.DIGEST, job.level, salt)
    if asked.value is None:
        return  # still due tomorrow
    title = f"Digest of days {job.first_day}-{job.last_day}"
    if job.level > 1:
        title += f" (level {job.level})"
    done = day.add(
        EntryInput(
            EntryKind.DIGEST,
            title,
            asked.value.digest,
            level=job.level,
            first_day=job.first_day,
            last_day=job.last_day,
        )
    )
    day.link(asked, done)
