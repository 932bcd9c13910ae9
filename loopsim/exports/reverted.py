"""What an export that leaves reverted days out says in their place.

A rejected check-in reverts the days since the last approving one; their entries stay in
the chain, and an export shows them only with ``include_reverted``. Without it a reader
must still see that days were there: each stretch of reverted days is named once, with
the check-in that reverted it, where its days would have stood.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from loopsim.record.store import CheckinRow, Store
from loopsim.record.streams import DayRow, EntryRow
from loopsim.schemas import Decision
from loopsim.text import plural


@dataclass(slots=True)
class Stretch:
    """Reverted days ``first..last`` (held indexes in a row), the check-in that reverted
    them (None if the record holds none that could have), and how many failed tries of
    those indexes were left out with them."""

    first: int
    last: int
    checkin: int | None
    failed: int = 0


def reverting_checkin(index: int, rejected: Sequence[CheckinRow]) -> int | None:
    """The check-in that reverted day ``index``: the first rejected one that covered it.
    A rejection reverts the days after the last approved one through its own last day,
    so no earlier rejection reached that far, and a later one found the day reverted."""
    return next((c.id for c in rejected if c.last_day_index >= index), None)


def reverted_stretches(store: Store, run_id: str) -> list[Stretch]:
    """The run's reverted days as stretches: days in a row that one check-in reverted."""
    rejected = [c for c in store.checkin_rows(run_id) if c.decision == Decision.REJECT]
    stretches: list[Stretch] = []
    for index in store.reverted_indexes(run_id):
        checkin = reverting_checkin(index, rejected)
        last = stretches[-1] if stretches else None
        if last is not None and last.last == index - 1 and last.checkin == checkin:
            last.last = index
        else:
            stretches.append(Stretch(index, index, checkin))
    return stretches


def in_place(
    days: Iterable[tuple[DayRow, list[EntryRow]]], stretches: Iterable[Stretch]
) -> Iterator[tuple[DayRow, list[EntryRow]] | Stretch]:
    """``days`` (in index order, reverted ones left out) with each stretch where its days
    stood. The failed tries of a stretch's indexes are counted into it, not passed on:
    shown alone they would say the day never succeeded. A stretch comes once its count
    is whole."""
    pending = deque(stretches)
    for day, entries in days:
        while pending and pending[0].last < day.index:
            yield pending.popleft()
        if pending and pending[0].first <= day.index:  # a failed try of a reverted day
            pending[0].failed += 1
            continue
        yield day, entries
    yield from pending


def left_out(stretch: Stretch) -> str:
    """What stands in a reverted stretch's place: ``Days 10–12: reverted at check-in 6
    (not shown, nor 3 failed tries of them; `--include-reverted` shows them)``."""
    one = stretch.first == stretch.last
    days = f"Day {stretch.first}" if one else f"Days {stretch.first}\u2013{stretch.last}"
    by = f" at check-in {stretch.checkin}" if stretch.checkin is not None else ""
    them = "it" if one else "them"
    tries = ""
    if stretch.failed:
        tries = f", nor {plural(stretch.failed, 'failed try', 'failed tries')} of {them}"
    shows = "it" if one and not stretch.failed else "them"
    return f"{days}: reverted{by} (not shown{tries}; `--include-reverted` shows {shows})"
