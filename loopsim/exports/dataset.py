"""Distillation data: what each approved day's researchers saw and returned, as chat
fine-tuning JSONL (schema ``loopsim.dataset/1``, documented in ``docs/export.md``).

A day is approved once a check-in that covers it is approved or amended. Days not yet
approved, failed days and reverted days are left out (reverted ones can be asked for).
Each model call that produced an accepted reply gives one record: the messages of its
first attempt and the accepted reply as the assistant turn. Invalid attempts and the
feedback that repaired them stay in the record's ``calls`` table, out of the dataset, so
a model trained on it learns to answer well at the first attempt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from loopsim.checkin.schedule import last_approved_day
from loopsim.exports.markdown import inert_json
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord, Day, Run
from loopsim.schemas import CallRole, DayStatus, RunStatus

SCHEMA = "loopsim.dataset/1"


@dataclass(frozen=True)
class DatasetFilter:
    """Which calls go into a dataset. Day bounds are inclusive; no kinds means all."""

    since_day: int | None = None
    until_day: int | None = None
    kinds: frozenset[CallRole] = field(default_factory=frozenset)
    include_reverted: bool = False

    def wants_day(self, day: Day, approved_through: int) -> bool:
        if self.since_day is not None and day.index < self.since_day:
            return False
        if self.until_day is not None and day.index > self.until_day:
            return False
        if day.status == DayStatus.REVERTED:
            return self.include_reverted
        return day.status == DayStatus.COMMITTED and day.index <= approved_through

    def wants_role(self, role: str) -> bool:
        """Probe predictions (made for a check-in, not by the day's researchers) only
        when asked for by name."""
        if not self.kinds:
            return role != CallRole.PROBE
        return role in self.kinds


@dataclass(frozen=True)
class Example:
    """One chat example: the conversation up to the reply, and the reply."""

    messages: list[dict[str, str]]
    reply: str
    role: str
    task: int
    depth: int
    model_version: str | None


def day_examples(day: Day, calls: list[CallRecord]) -> list[Example]:
    """The accepted calls of one day, each with the prompt of its first attempt.

    A day written before calls were recorded (schema revision 0003 and earlier) has no
    ``calls`` rows of its own (a later check-in may have added its probe predictions);
    its stored prompt and reply give its one example.
    """
    out: list[Example] = []
    if all(call.role == CallRole.PROBE for call in calls) and day.raw_output is not None:
        out.append(Example(list(day.prompt), day.raw_output, CallRole.DAY, 0, 0, day.model_version))
    first: dict[int, CallRecord] = {}
    for call in calls:
        first.setdefault(call.task, call)
        if call.accepted:
            start = first[call.task]
            out.append(
                Example(
                    list(start.messages),
                    call.reply,
                    call.role,
                    call.task,
                    call.depth,
                    call.model_version,
                )
            )
    return out


@dataclass
class Tally:
    """What a dataset export wrote, and the committed days it left out as unapproved."""

    examples: int = 0
    days: int = 0
    awaiting: int = 0
    ended: str | None = None  # the run's status, once no check-in can come
    withheld: int = 0  # probe predictions of check-ins whose probes are not all answered

    def describe(self) -> str:
        text = f"{_count(self.examples, 'example')} from {_count(self.days, 'day')}"
        if self.awaiting and self.ended is not None:
            were = "day was" if self.awaiting == 1 else "days were"
            text += (
                f"; {self.awaiting} committed {were} never approved "
                f"(the run is {self.ended}: no check-in will come)"
            )
        elif self.awaiting == 1:
            text += "; 1 committed day awaits an approving check-in"
        elif self.awaiting:
            text += f"; {self.awaiting} committed days await an approving check-in"
        if self.withheld:
            text += (
                f"; {_count(self.withheld, 'probe prediction')} withheld, from check-ins "
                "with probes the human has not answered"
            )
        return text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def to_dataset(
    store: Store, run: Run, filt: DatasetFilter | None = None, tally: Tally | None = None
) -> Iterator[str]:
    """One JSON line per accepted model call of every selected day, in day order.
    ``tally``, if given, counts what was written and what awaits approval."""
    filt = filt or DatasetFilter()
    tally = tally if tally is not None else Tally()
    if run.status in (RunStatus.COMPLETED, RunStatus.HALTED):
        tally.ended = str(run.status)
    approved_through = last_approved_day(store, run.id)
    # A prediction stays hidden until the human's blind answers are stored, here as in
    # the review and every other export (a check-in approved without answers included).
    blind = store.blind_days(run.id) if filt.wants_role(CallRole.PROBE) else set()
    # The calls of every day the filter can take, in one batched read beside the days'
    # (both in day order), instead of a query a day.
    last = filt.until_day
    if not filt.include_reverted:
        last = approved_through if last is None else min(last, approved_through)
    calls = store.iter_run_calls(run.id, day_range=(filt.since_day or 1, last))
    pending = next(calls, None)
    for day in store.iter_days(run.id):  # in batches: a run may hold 10^4 days
        own: list[CallRecord] = []
        while pending is not None and (pending[1].index, pending[1].id) <= (day.index, day.id):
            if pending[1].id == day.id:
                own.append(pending[0])
            pending = next(calls, None)
        if not filt.wants_day(day, approved_through):
            # A committed day the filter would take, were it approved.
            if day.status == DayStatus.COMMITTED and filt.wants_day(day, day.index):
                tally.awaiting += 1
            continue
        wrote = tally.examples
        for example in day_examples(day, own):
            if not filt.wants_role(example.role):
                continue
            if example.role == CallRole.PROBE and day.index in blind:
                tally.withheld += 1
                continue
            tally.examples += 1
            yield inert_json(_record(run, day, example))
        if tally.examples > wrote:
            tally.days += 1


def _record(run: Run, day: Day, example: Example) -> dict[str, Any]:
    return {
        "messages": [
            *({"role": m["role"], "content": m["content"]} for m in example.messages),
            {"role": "assistant", "content": example.reply},
        ],
        "metadata": {
            "schema": SCHEMA,
            "run_id": run.id,
            "day_index": day.index,
            "day_status": day.status,
            "external_date": day.external_date.isoformat(),
            "kind": example.role,
            "task": example.task,
            "depth": example.depth,
            "model_version": example.model_version,
        },
    }
