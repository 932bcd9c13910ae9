"""Replies that copy their instructions: the embedded model repeats any example its
prompt shows, word for word, and a day of copied instructions is no day's work. A reply
whose text repeats ``SHINGLE_WORDS`` words of the instructions in a row is refused, and
the reason fed back to the model.
"""

from __future__ import annotations

import functools
import re

from loopsim.researcher.prompts import Prompt
from loopsim.schemas import DayReport

SHINGLE_WORDS = 8


def words(text: str) -> list[str]:
    """Lower-case words, punctuation and JSON syntax dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower())


@functools.lru_cache(maxsize=256)
def shingles(text: str, n: int = SHINGLE_WORDS) -> frozenset[tuple[str, ...]]:
    """Every run of ``n`` consecutive words in ``text``. Kept for the last 256 texts: a
    run's instructions are the same from one day to the next."""
    found = words(text)
    return frozenset(tuple(found[i : i + n]) for i in range(len(found) - n + 1))


def copied_run(
    text: str, source: frozenset[tuple[str, ...]], n: int = SHINGLE_WORDS
) -> tuple[str, ...] | None:
    """The first run of ``n`` words of ``text`` that also occurs in ``source`` (the
    shingles of the instructions), or None: the text is the model's own."""
    found = words(text)
    for i in range(len(found) - n + 1):
        if tuple(found[i : i + n]) in source:
            return tuple(found[i : i + n])
    return None


def instructions_of(prompt: Prompt) -> str:
    """A day's instructions: its system message and the user message's closing line ("Today's
    date is ... Write today's work."); the record between them is a day's to quote."""
    said = [c if r == "system" else c.rsplit("\n\n", 1)[-1] for r, c in prompt.messages]
    return "\n".join(said[:2])


def refuse_copies(report: DayReport, prompt: Prompt) -> DayReport:
    """``report`` if none of its text repeats ``SHINGLE_WORDS`` words of the prompt's
    instructions in a row; else ValueError, whose message is fed back to the model."""
    source = shingles(instructions_of(prompt))
    texts: list[tuple[str, str]] = []
    for i, entry in enumerate(report.entries, 1):
        texts += [(f"entry {i} title", entry.title), (f"entry {i} body", entry.body)]
    for i, idea in enumerate(report.ideas, 1):
        texts += [(f"idea {i} title", idea.title), (f"idea {i} body", idea.body)]
    texts += [(f"sub-question {i}", q) for i, q in enumerate(report.subquestions, 1)]
    for where, text in texts:
        run = copied_run(text, source)
        if run is not None:
            raise ValueError(
                f'{where} copies the instructions word for word ("{" ".join(run)}"); write '
                "today's work on the charter in your own words"
            )
    return report
