"""Test doubles, public so that projects building on loopsim can use them too.

:class:`ScriptedChatModel` replays replies in order and records every prompt it saw. It
is a langchain-core chat model, so it goes through the same :class:`ChatHandle` seam as a
real one. Never use it for real runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

from loopsim.chat.handle import ChatFactory, ChatHandle
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import Day, utcnow
from loopsim.schemas import DayStatus, ModelSpec

Script = str | Callable[[list[BaseMessage]], str]


def report_json(
    *entries: tuple[str, str, str],
    subquestions: list[str] | None = None,
    ideas: list[tuple[str, str]] | None = None,
) -> str:
    """A valid DayReport as JSON, from (kind, title, body) triples."""
    payload: dict[str, Any] = {
        "entries": [{"kind": k, "title": t, "body": b} for k, t, b in entries]
    }
    if subquestions:
        payload["subquestions"] = subquestions
    if ideas:
        payload["ideas"] = [{"title": t, "body": b} for t, b in ideas]
    return json.dumps(payload)


DIGEST_ASKED = "Compress them into one digest"  # in the digest call's instructions


def digest_json(messages: list[BaseMessage]) -> str:
    """A valid digest of the entries a digest call hands over, named by their heading."""
    heading = messages[-1].text.split("# Entries: ", 1)[-1].split("\n", 1)[0]
    return json.dumps(
        {"digest": f"Digest of {heading}: foragers were marked, dances filmed and counted."}
    )


def default_reply(messages: list[BaseMessage]) -> str:
    """A plausible, valid day whose text depends only on the prompt; a digest call gets a
    digest, as a real model's would."""
    if DIGEST_ASKED in messages[0].text:
        return digest_json(messages)
    date = messages[-1].text.rsplit("Today's date is ", 1)[-1][:10]
    return report_json(
        (
            "note",
            f"Observations for {date}",
            f"Working through the charter on {date}, I read "
            "the log and wrote down what seems most promising to pursue next.",
        ),
        (
            "question",
            "What should be measured first",
            "Which measurement would most quickly separate the competing explanations in the log?",
        ),
    )


def amplified_reply(messages: list[BaseMessage]) -> str:
    """A valid reply to any call of an amplified day, chosen by what the call asks for:
    a day report posing three sub-questions and three ideas, a sub-answer posing three
    more, a critique whose score depends only on the idea, or a digest. It always offers
    more than any limit allows, so tests see the limits enforced by loopsim."""
    system, user = messages[0].text, messages[-1].text
    if "hands you the question below" in system:
        question = " ".join(user.rsplit("Question: ", 1)[-1].split())
        return json.dumps(
            {
                "answer": f"Working from the log, the answer to this is a careful yes: {question}",
                "subquestions": [
                    f"Which measurement would settle part {k} of that question?" for k in (1, 2, 3)
                ],
            }
        )
    if "Judge it as a careful critic" in system:
        title = user.split("# Idea: ", 1)[-1].split("\n", 1)[0]
        score = sum(map(ord, title)) % 11
        return json.dumps(
            {"score": score, "critique": f"The idea '{title}' is testable; its cost is the risk."}
        )
    if DIGEST_ASKED in system:
        return digest_json(messages)
    date = user.rsplit("Today's date is ", 1)[-1][:10]
    return json.dumps(
        {
            "entries": [
                {
                    "kind": "note",
                    "title": "Field notes from the comb",
                    "body": f"On {date} I filmed marked foragers on the comb and counted dances.",
                }
            ],
            "subquestions": [
                "How far do foragers fly for rich nectar?",
                "Does dance duration track distance?",
                "Do scouts recruit more for sugar-rich patches?",
            ],
            "ideas": [
                {"title": t, "body": f"{t}: compare marked foragers across two feeder setups."}
                for t in ("Feeder ladder", "Odour trail test", "Night-time count")
            ],
        }
    )


class ScriptedChatModel(BaseChatModel):
    """Replies from a script, in order; the last item repeats when the script runs out.

    ``delay`` seconds pass before each reply (``asyncio.sleep`` on the async path, so a
    service can cancel it). ``in_flight`` counts calls under way, by ``key_fn(messages)``,
    and ``max_in_flight`` keeps the peak of each: tests use it to show that no two workers
    ever step one run at once."""

    script: list[Any]
    delay: float = 0.0
    key_fn: Callable[[list[BaseMessage]], str] | None = None
    _calls: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _in_flight: dict[str, int] = PrivateAttr(default_factory=dict)
    _max_in_flight: dict[str, int] = PrivateAttr(default_factory=dict)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def max_in_flight(self) -> dict[str, int]:
        return dict(self._max_in_flight)

    def _enter(self, messages: list[BaseMessage]) -> str:
        key = self.key_fn(messages) if self.key_fn else ""
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._max_in_flight[key] = max(self._max_in_flight.get(key, 0), self._in_flight[key])
        return key

    def _leave(self, key: str) -> None:
        with self._lock:
            self._in_flight[key] -= 1

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        key = self._enter(messages)
        try:
            await asyncio.sleep(self.delay)
            return self._reply(messages)
        finally:
            self._leave(key)

    @property
    def _llm_type(self) -> str:
        return "loopsim-scripted"

    @property
    def calls(self) -> list[list[BaseMessage]]:
        return self._calls

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        key = self._enter(messages)
        try:
            if self.delay:  # sleep(0) gives up the core: milliseconds on a busy machine
                time.sleep(self.delay)
            return self._reply(messages)
        finally:
            self._leave(key)

    def _reply(self, messages: list[BaseMessage]) -> ChatResult:
        with self._lock:
            index = min(len(self._calls), len(self.script) - 1)
            self._calls.append(list(messages))
        item = self.script[index]
        if isinstance(item, BaseException):
            raise item
        text = item(messages) if callable(item) else str(item)
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": sum(len(m.text) for m in messages) // 4,
                "output_tokens": len(text) // 4,
                "total_tokens": 0,
            },
            response_metadata={"model_name": "scripted-1"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def add_day(
    store: Store,
    run_id: str,
    index: int,
    items: Sequence[EntryInput] = (),
    *,
    status: str = DayStatus.COMMITTED,
    date: dt.date = dt.date(2025, 6, 2),
    error: str | None = None,
) -> Day:
    """A day with entries written straight through the store, for seeding records in
    tests and benchmarks without a model. The day returned is not in the session."""
    now = utcnow()
    day = store.add_day(
        run_id,
        index,
        external_date=date,
        status=status,
        model_id="seed",
        model_version="seed",
        prompt_hash="0" * 64,
        prompt=[],
        error=error,
        attempts=1,
        started_at=now,
        finished_at=now,
    )
    if items:
        store.append_entries(run_id, items, day=day, external_date=date)
    return day


def scripted_factory(
    script: Sequence[Any] = (default_reply,), **options: Any
) -> tuple[ChatFactory, ScriptedChatModel]:
    """A chat factory that always hands out one scripted model, and that model."""
    model = ScriptedChatModel(script=list(script), **options)

    def factory(model_id: str, spec: ModelSpec, max_tokens: int) -> ChatHandle:
        return ChatHandle(model_id, model, structured="none", version="scripted-1")

    return factory, model


def write_locked(path: str) -> bool:
    """Whether some connection holds the SQLite file's write lock at this moment: a
    ``BEGIN IMMEDIATE`` that may not wait fails."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()
