"""The view: the bounded slice of the record one day's researcher reads.

Rules, in the order they are applied:

1. Pinned, always present: the charter, every human correction, the latest digest.
2. The most recent visible entries, newest first, until most of the budget is used.
3. Full-text matches for the charter's open questions and recent questions, until the
   budget is full.

Visible means: not from a reverted or failed day, and not dated after the day's external
date. Every part comes from an indexed, ``LIMIT``-ed query; the whole record is never
loaded.

Rendering order is chosen for prompt-cache reuse: the parts that change least come first
(charter, corrections, then recent entries oldest to newest, so a new day only appends),
and the parts that change daily (digest, related matches) come last.

This module never sees check-ins, probes or their schedule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from loopsim.models import Entry
from loopsim.schemas import Charter, EntryKind
from loopsim.store import Store

RECENT_SHARE = 0.75
PAGE = 50


def estimate_tokens(text: str) -> int:
    """A conservative offline token count: about 3 UTF-8 bytes a token.

    English runs near 4 bytes a token in common tokenizers, so this over-counts, which
    keeps a view under budget without downloading any tokenizer.
    """
    return (len(text.encode("utf-8")) + 2) // 3


@dataclass(frozen=True)
class ViewEntry:
    seq: int
    day_index: int | None
    external_date: dt.date
    kind: str
    author: str
    title: str
    body: str

    @classmethod
    def of(cls, entry: Entry, day_index: int | None) -> ViewEntry:
        return cls(
            entry.seq,
            day_index,
            entry.external_date,
            entry.kind,
            entry.author,
            entry.title,
            entry.body,
        )

    def render(self) -> str:
        where = f"day {self.day_index}" if self.day_index is not None else "outside any day"
        head = f"[#{self.seq} {self.kind}, {where}, {self.external_date.isoformat()}"
        if self.author != "researcher":
            head += f", by {self.author}"
        return f"{head}] {self.title}\n{self.body}"


@dataclass(frozen=True)
class View:
    charter: Charter
    corrections: tuple[ViewEntry, ...]
    digest: ViewEntry | None
    recent: tuple[ViewEntry, ...]
    related: tuple[ViewEntry, ...]
    budget: int
    tokens: int = field(default=0)

    @property
    def seqs(self) -> list[int]:
        parts = [*self.corrections, *self.recent, *self.related]
        if self.digest:
            parts.append(self.digest)
        return sorted(e.seq for e in parts)

    def render(self) -> str:
        lines = ["# Charter", self.charter.agenda.strip()]
        if self.charter.open_questions:
            lines.append("\nOpen questions:")
            lines.extend(f"- {q}" for q in self.charter.open_questions)
        if self.corrections:
            lines.append("\n# Corrections from the real researcher (these override the log)")
            lines.extend(e.render() for e in self.corrections)
        lines.append("\n# Research log, recent entries (oldest first)")
        if self.recent:
            lines.extend(e.render() for e in self.recent)
        else:
            lines.append("(empty: this is the first day)")
        if self.digest:
            lines.append("\n# Digest of the log so far")
            lines.append(self.digest.body)
        if self.related:
            lines.append("\n# Older entries related to the open questions")
            lines.extend(e.render() for e in self.related)
        return "\n".join(lines)


def _charter_cost(charter: Charter) -> int:
    return estimate_tokens(charter.agenda) + sum(estimate_tokens(q) for q in charter.open_questions)


def build_view(
    store: Store, run_id: str, charter: Charter, external_date: dt.date, budget: int
) -> View:
    """Build the view for one day at ``external_date`` within ``budget`` tokens."""
    used = _charter_cost(charter) + 40
    corrections = tuple(
        ViewEntry.of(e, None) for e in store.pinned_corrections(run_id, external_date)
    )
    used += sum(estimate_tokens(e.render()) for e in corrections)
    digest_entry = store.latest_digest(run_id, external_date)
    digest = ViewEntry.of(digest_entry, None) if digest_entry else None
    if digest:
        used += estimate_tokens(digest.body) + 10

    recent: list[ViewEntry] = []
    recent_limit = used + int(max(0, budget - used) * RECENT_SHARE)
    before: int | None = None
    full = False
    while not full:
        page = store.recent_entries(run_id, external_date, before_seq=before, limit=PAGE)
        for entry, day_index in page:
            item = ViewEntry.of(entry, day_index)
            cost = estimate_tokens(item.render()) + 1
            if used + cost > recent_limit:
                full = True
                break
            recent.append(item)
            used += cost
        if len(page) < PAGE:
            break
        before = page[-1][0].seq
    recent.reverse()

    related: list[ViewEntry] = []
    shown = {e.seq for e in recent}
    questions = [*charter.open_questions]
    questions.extend(f"{e.title} {e.body}" for e in recent if e.kind == EntryKind.QUESTION)
    if questions and used < budget:
        for entry, day_index, _status in store.search(
            run_id, " ".join(questions), until=external_date, limit=30
        ):
            if entry.seq in shown or entry.kind in (EntryKind.DIGEST, EntryKind.CORRECTION):
                continue
            item = ViewEntry.of(entry, day_index)
            cost = estimate_tokens(item.render()) + 1
            if used + cost > budget:
                continue
            related.append(item)
            used += cost
        related.sort(key=lambda e: e.seq)
    return View(charter, corrections, digest, tuple(recent), tuple(related), budget, used)
