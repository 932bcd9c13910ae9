"""The view: the bounded slice of the record one day's researcher reads.

What it holds, in the order it is rendered:

1. Pinned, always present: the charter and every human correction.
2. The digests (see :mod:`loopsim.researcher.day`) that tile every day before the raw window,
   highest level first while they fit their share of the budget.
3. Full-text matches among the ``SEARCH_HORIZON`` entries just before the raw window,
   for the sub-question (if any) and the charter's open questions, within their share.
4. The raw window: every entry of the days from a digest boundary on, oldest first.
5. The day's date (added by the prompt, last).

Visible means: not from a reverted or failed day, and not dated after the day's external
date. Every part comes from an indexed, ``LIMIT``-ed query; the whole record is never
loaded.

The order serves prompt caches: the window's start moves only once every ``GRID_DAYS``
days, and everything above the window depends only on that start, so on the days between
a new day only appends to the prompt.

Tokens are counted by the run's model's :class:`~loopsim.chat.tokens.TokenCounter`
(llama.cpp's own tokenizer for the embedded model, an estimate that over-counts for the
rest), and the rendered view is counted whole before it is returned: it never exceeds
its budget by that count.

This module never sees check-ins, probes or their schedule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from loopsim.chat.tokens import ESTIMATE, TokenCounter, estimate_tokens
from loopsim.record.store import DigestRow, DigestState, Store
from loopsim.record.tables import Entry
from loopsim.schemas import Charter, EntryKind

RELATED_SHARE = 0.1
FOCUS_RELATED_SHARE = 0.5
DIGEST_SHARE = 0.4
RELATED_LIMIT = 30
# Related entries are searched for among the entries just before the raw window only, so
# a day's cost stops growing with the record; what is older reaches it through digests.
SEARCH_HORIZON = 20_000
GRID_DAYS = 15
BOUNDARIES = 64
PAGE = 50
# Rebuilds, each with the budget cut by the overshoot, before a view over its budget by
# the whole count (the parts' counts do not always add up to it) is returned as it is.
FITS = 4

__all__ = ["View", "ViewEntry", "build_view", "estimate_tokens"]


@dataclass(frozen=True)
class ViewEntry:
    seq: int
    day_index: int | None
    external_date: dt.date
    kind: str
    author: str
    title: str
    body: str
    first_day: int | None = None  # digests: the days covered
    last_day: int | None = None

    @classmethod
    def of(cls, entry: Entry | DigestRow, day_index: int | None) -> ViewEntry:
        return cls(
            entry.seq,
            day_index,
            entry.external_date,
            entry.kind,
            entry.author,
            entry.title,
            entry.body,
            entry.first_day,
            entry.last_day,
        )

    def render(self) -> str:
        if self.first_day is not None:  # a digest speaks for the days it covers
            where = f"days {self.first_day}-{self.last_day}"
        elif self.day_index is not None:
            where = f"day {self.day_index}"
        else:
            where = "outside any day"
        head = f"[#{self.seq} {self.kind}, {where}, {self.external_date.isoformat()}"
        if self.author != "researcher":
            head += f", by {self.author}"
        return f"{head}] {self.title}\n{self.body}"


@dataclass(frozen=True)
class View:
    charter: Charter
    corrections: tuple[ViewEntry, ...]
    digests: tuple[ViewEntry, ...]
    recent: tuple[ViewEntry, ...]
    related: tuple[ViewEntry, ...]
    budget: int
    tokens: int = field(default=0)
    focus: str | None = None

    @property
    def seqs(self) -> list[int]:
        return sorted(
            e.seq for e in (*self.corrections, *self.digests, *self.recent, *self.related)
        )

    def render(self) -> str:
        lines = charter_lines(self.charter)
        if self.corrections:
            lines.append("\n# Corrections from the real researcher (these override the log)")
            lines.extend(e.render() for e in self.corrections)
        if self.digests:
            lines.append("\n# Digests of earlier days (oldest first)")
            lines.extend(e.render() for e in self.digests)
        if self.related:
            heading = "the question below" if self.focus else "the open questions"
            lines.append(f"\n# Older entries related to {heading}")
            lines.extend(e.render() for e in self.related)
        lines.append("\n# Research log, recent entries (oldest first)")
        if self.recent:
            lines.extend(e.render() for e in self.recent)
        else:
            lines.append("(empty: this is the first day)" if not self.digests else "(none)")
        return "\n".join(lines)


def charter_lines(charter: Charter) -> list[str]:
    lines = ["# Charter", charter.agenda.strip()]
    if charter.open_questions:
        lines.append("\nOpen questions:")
        lines.extend(f"- {q}" for q in charter.open_questions)
    return lines


# Every heading a view may show, counted once per counter as the room they take.
HEADINGS = "\n".join(
    [
        "\n# Corrections from the real researcher (these override the log)",
        "\n# Digests of earlier days (oldest first)",
        "\n# Older entries related to the open questions",
        "\n# Research log, recent entries (oldest first)",
        "(empty: this is the first day)",
    ]
)


class _Costs:
    """One counter's costs: each entry counted once, with the line break before it."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter
        self.known: dict[tuple[int, int | None], int] = {}

    def __call__(self, item: ViewEntry) -> int:
        cost = self.known.get((item.seq, item.day_index))
        if cost is None:
            cost = self.known[item.seq, item.day_index] = self.counter.count(item.render()) + 1
        return cost


def build_view(
    store: Store,
    run_id: str,
    charter: Charter,
    external_date: dt.date,
    budget: int,
    *,
    focus: str | None = None,
    grid: int = GRID_DAYS,
    digests_now: DigestState | None = None,
    counter: TokenCounter = ESTIMATE,
) -> View:
    """Build the view for one day at ``external_date`` within ``budget`` tokens, as
    ``counter`` counts them (the run's model's: :func:`loopsim.chat.tokens.counter_for`).

    ``focus`` (a sub-question) makes the view a sub-researcher's: relevance is searched
    for the question first, and recent entries get a smaller share of the budget.
    ``digests_now``: ``store.digest_state(run_id, external_date)``, if the caller has it.

    The view is counted whole, and rebuilt with less room while it is over ``budget``;
    only the pinned parts (charter and corrections) can keep it over.
    """
    cost = _Costs(counter)
    target = budget
    for _ in range(FITS):
        view = _build(store, run_id, charter, external_date, target, focus, grid, digests_now, cost)
        view = replace(view, budget=budget, tokens=counter.count(view.render()))
        if view.tokens <= budget or target <= 0:
            break
        target = max(0, target - (view.tokens - budget))
    return view


def _build(
    store: Store,
    run_id: str,
    charter: Charter,
    external_date: dt.date,
    budget: int,
    focus: str | None,
    grid: int,
    digests_now: DigestState | None,
    _cost: _Costs,
) -> View:
    counter = _cost.counter
    used = counter.count("\n".join(charter_lines(charter))) + counter.count(HEADINGS)
    corrections = tuple(
        # Shown as notes from outside the days, whichever day wrote them.
        ViewEntry(row[0], None, *row[2:])
        for row in store.pinned_corrections(run_id, external_date)
    )
    used += sum(_cost(e) for e in corrections)

    # What the corrections leave is shared by the digests, the related entries and the
    # raw window. The window starts on a digest boundary (see _window); the digests tile
    # every day before it, highest level first while they fit; the related entries come
    # from before it too. So only the window's end changes from one day to the next.
    room = max(0, budget - used)
    pinned_now = store.pinned_digests(run_id, external_date, state=digests_now)
    digest_reserve = min(
        int(room * DIGEST_SHARE),
        int(1.5 * sum(_cost(ViewEntry.of(d, None)) for d in pinned_now)) + 200 * bool(pinned_now),
    )
    related_reserve = int(room * (FOCUS_RELATED_SHARE if focus else RELATED_SHARE))
    start, recent, recent_cost = _window(
        store, run_id, external_date, room - digest_reserve - related_reserve, grid, _cost
    )
    used += recent_cost
    # Both sections above the window get room that does not change while its start
    # stays: the digests up to their share (or what the window and the related share
    # leave, if less), the related entries exactly their share. Room left over stays
    # unused rather than let either section change from one day to the next.
    digest_limit = used + min(int(room * DIGEST_SHARE), room - recent_cost - related_reserve)
    shown: list[ViewEntry] = []
    # The digests before the window as they stood on the window's first day: a digest
    # written later (a level compressing the one below) waits until the window moves, so
    # this section, like the window's start, stays byte-identical from day to day.
    # None visible today means none written by the window's first day either.
    pinned = (
        store.pinned_digests(run_id, external_date, before_day=start, written_by=start)
        if pinned_now
        else []
    )
    for digest in sorted(pinned, key=lambda d: (-(d.level or 0), d.first_day or 0)):
        item = ViewEntry.of(digest, None)
        if used + _cost(item) > digest_limit:
            continue
        shown.append(item)
        used += _cost(item)
    digests = tuple(sorted(shown, key=lambda d: (d.first_day or 0, d.seq)))

    # Relevance for the day's open questions (and a sub-researcher's question) among the
    # entries before the window: stable while the window's start stays put.
    related: list[ViewEntry] = []
    questions = [focus] if focus else []
    questions.extend(charter.open_questions)
    related_limit = min(used + related_reserve, budget)
    if questions and used < related_limit:
        # Searched among the SEARCH_HORIZON entries before the window: a range that, like
        # everything above the window, moves only when the window's start does.
        last = recent[0].seq - 1 if recent else store.chain_head(run_id)[0]
        for entry, day_index, _status in store.search(
            run_id,
            " ".join(questions),
            until=external_date,
            before_day=start,
            limit=RELATED_LIMIT,
            seq_range=(max(1, last - SEARCH_HORIZON + 1), last),
        ):
            if entry.kind in (EntryKind.DIGEST, EntryKind.CORRECTION):
                continue
            item = ViewEntry.of(entry, day_index)
            if used + _cost(item) > related_limit:
                continue
            related.append(item)
            used += _cost(item)
        related.sort(key=lambda e: e.seq)
    return View(charter, corrections, digests, tuple(recent), tuple(related), budget, used, focus)


def _window(
    store: Store, run_id: str, until: dt.date, limit: int, grid: int, _cost: _Costs
) -> tuple[int, list[ViewEntry], int]:
    """The raw window: entries of the days from a start day on, oldest first, within
    ``limit`` tokens; returns the start, the entries and their cost.

    The start is a digest boundary (a day just after a level-1 digest ends, or day 1), so
    the digests before it cover every earlier day exactly. While one fits, only the first
    boundary in each span of ``grid`` days is a candidate, so the start, and with it the
    prompt's prefix (what a server's prompt cache reuses), moves once every ``grid`` days
    rather than daily: days in between only append. Which boundaries are candidates
    depends on their day numbers alone, so it does not change as the record grows.
    Without a fitting boundary, the newest entries that fit are shown."""
    boundaries = store.digest_boundaries(run_id, until, limit=BOUNDARIES)  # newest first
    oldest_allowed = boundaries[-1] if boundaries else 1
    candidates = sorted({1, *boundaries})
    # A boundary is coarse if it is the first in its span of days. Day 1 always is; when
    # the list was cut, the oldest listed boundary's predecessor is unknown: not coarse.
    listed = sorted(b for b in boundaries if b != 1)
    first: int | None = None if len(boundaries) >= BOUNDARIES else 1
    coarse = [1] if first == 1 else []
    for prev, b in zip([first, *listed], listed, strict=False):
        if prev is not None and (prev - 1) // grid != (b - 1) // grid:
            coarse.append(b)
    taken: list[ViewEntry] = []
    used = 0
    before: int | None = None
    full = False
    while not full:
        page = store.recent_entries(
            run_id, until, before_seq=before, limit=PAGE, after_day=max(0, oldest_allowed - 1)
        )
        for seq, day_index, date, kind, author, title, body, first_day, last_day in page:
            item = ViewEntry(seq, day_index, date, kind, author, title, body, first_day, last_day)
            if used + _cost(item) > limit:
                full = True
                break
            taken.append(item)
            used += _cost(item)
        if len(page) < PAGE:
            break
        before = page[-1][0]  # its seq
    if not full:
        start = oldest_allowed if boundaries else 1
    else:
        # The oldest day taken may be cut part-way: start after it, on a boundary.
        oldest = min((e.day_index for e in taken if e.day_index is not None), default=0)
        fitting = [b for b in coarse if b > oldest] or [b for b in candidates if b > oldest]
        kept = [e for e in taken if fitting and (e.day_index is None or e.day_index >= fitting[0])]
        if kept:
            start, taken = fitting[0], kept
            used = sum(_cost(e) for e in taken)
        else:  # no boundary leaves anything to show: the newest entries that fit
            start = max(oldest_allowed, oldest)
    taken.reverse()
    return start, taken, used
