"""The judge: a fresh model call that rates a prediction against the human's answer.

A similarity measures topic: "X works" and "X does not work" sit close in any embedding.
The judge reads both texts and rates agreement of *view* on the human's own 1-5 scale.
It is a fresh call with its own prompt, recorded on the probe pair (messages, reply,
rating); it never sees the schedule, the run's record or the drift, and its verdict never
reaches a researcher's prompt (the researcher package cannot import this one). A rating
from the human always wins over the judge's (see :func:`calibration.pair_agreement`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from loopsim.chat.handle import ChatHandle
from loopsim.errors import ModelUnavailable
from loopsim.researcher.conversation import (
    Asked,
    Logged,
    ask,
    drive,
    parse_json_reply,
    reply_schema,
)
from loopsim.researcher.prompts import Prompt, echoes

JUDGE_SYSTEM = (
    "You compare two answers to the same question and rate how far they hold the same "
    "view: the same claims, the same stance, the same reasons. Wording does not matter; "
    "a paraphrase of the same view is a 5, an answer that asserts the opposite is a 1, an "
    "answer about something else is a 1. Scale: 1 opposite or unrelated, 2 mostly "
    "different, 3 partly the same, 4 mostly the same, 5 the same view. Reply with a JSON "
    'object with the keys "rating" (an integer from 1 to 5) and "reason" (one sentence).'
)


# A verdict is a number and one sentence.
JUDGE_MAX_TOKENS = 200


class Verdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: int = Field(ge=1, le=5)
    reason: str = Field(max_length=600)


@dataclass
class Judged:
    """What the judge said, and every call it took to say it."""

    rating: int | None
    reason: str | None
    error: str | None
    calls: list[Logged] = field(default_factory=list)


def judge_prompt(question: str, answer: str, prediction: str) -> Prompt:
    """The judge's whole input. The system text is folded into the user turn by models
    without a system role, as for any prompt."""
    user = (
        f"Question: {question.strip()}\n\n"
        f'Answer A:\n"""\n{answer.strip()}\n"""\n\n'
        f'Answer B:\n"""\n{prediction.strip()}\n"""\n\n'
        "How far does answer B hold the same view as answer A?"
    )
    return Prompt((("system", JUDGE_SYSTEM), ("user", user)))


def judge(
    chat: ChatHandle, question: str, answer: str, prediction: str, *, max_retries: int = 2
) -> Judged:
    """Rate ``prediction`` against the human's ``answer``. A model that never gives a valid
    verdict yields ``rating=None`` with the last error; the caller goes on without it."""
    log: list[Logged] = []
    try:
        asked: Asked[Verdict] = drive(
            ask(
                judge_prompt(question, answer, prediction),
                lambda raw: parse_json_reply(Verdict, raw),
                schema=reply_schema(Verdict),
                salt="judge",
                max_retries=max_retries,
                max_chars=4000,
                log=log,
                role="judge",
                echo=echoes(chat.model_id),
            ),
            chat,
        )
    except ModelUnavailable as exc:
        return Judged(None, None, str(exc), log)
    if asked.value is None:
        return Judged(None, None, asked.error, log)
    return Judged(asked.value.rating, asked.value.reason, None, log)
