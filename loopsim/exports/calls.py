"""Every model call of a run, as plain data: what `loopsim calls` prints and what
``export --format jsonl --calls`` writes (``type: "call"``, see ``docs/export.md``).

A run's calls come from two places. The ``calls`` table holds every call a day made
(report, sub-question, critic, digest) and the probe predictions of a check-in, added to
the last day it covers. A judge's calls, made when a decision rates a prediction, are
kept on their probe pair; they are shown here too, with the check-in's last day, after
that day's own calls (``source: "judge"``, no ``ordinal``).

Blind probes stay blind: while a probe of a check-in has no stored answer from the human,
the predictions made for it are hidden (``hidden: true``, the reply and any earlier
attempt quoted in the messages replaced by null), as every other export hides them.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loopsim.exports.markdown import SCHEMA
from loopsim.record.store import Store
from loopsim.record.tables import CallRecord, CheckIn, Day, Probe, ProbePair, Run
from loopsim.schemas import CallRole, DayStatus
from loopsim.text import inert_json

JUDGE = "judge"
ROLES = (*(role.value for role in CallRole), JUDGE)
"""Every role a call can have, in the order of a day: the day's report, then its tree."""


@dataclass(frozen=True)
class CallQuery:
    """Which calls to read: one day or all, some roles or all, the latest few or all."""

    day_index: int | None = None
    roles: frozenset[str] = field(default_factory=frozenset)
    last: int | None = None
    include_reverted: bool = True


def call_records(store: Store, run: Run, query: CallQuery | None = None) -> list[dict[str, Any]]:
    """The calls ``query`` selects, as records in day order: each day's own calls in the
    order they were made, then the judge calls of the check-ins that day ends."""
    query = query or CallQuery()
    if query.last is None:
        return list(iter_call_records(store, run, query))
    wants_table, wants_judge = _wants(query)
    rows = store.run_calls(run.id, **_selection(query), last=query.last) if wants_table else []
    records = _table_records(rows, store.blind_days(run.id))
    if wants_judge:
        # Judge calls older than the oldest call kept cannot be among the latest ones,
        # unless there were no table calls to compare with.
        since = rows[0][1].index if rows else None
        records = sorted([*records, *_judges(store, run, query, since)], key=_position)
    return [_public(r) for r in records[-query.last :]]


def iter_call_records(
    store: Store, run: Run, query: CallQuery | None = None
) -> Iterator[dict[str, Any]]:
    """:func:`call_records` without ``last``, a day at a time: the calls are read in
    batches, and each day index's own calls are followed by its judges' calls."""
    query = query or CallQuery()
    wants_table, wants_judge = _wants(query)
    blind = store.blind_days(run.id)
    judges = deque(_judges(store, run, query, None) if wants_judge else [])
    rows = store.iter_run_calls(run.id, **_selection(query)) if wants_table else iter(())
    for index, group in itertools.groupby(rows, key=lambda row: row[1].index):
        while judges and judges[0]["day_index"] < index:
            yield _public(judges.popleft())
        for record in _table_records(list(group), blind):
            yield _public(record)
        while judges and judges[0]["day_index"] == index:
            yield _public(judges.popleft())
    while judges:
        yield _public(judges.popleft())


def _wants(query: CallQuery) -> tuple[bool, bool]:
    """Whether the query wants the calls table's rows, and the judges' calls."""
    return not query.roles or bool(query.roles - {JUDGE}), not query.roles or JUDGE in query.roles


def _selection(query: CallQuery) -> dict[str, Any]:
    """Which of the calls table's rows the query keeps, as the store's arguments."""
    return {
        "day_index": query.day_index,
        "roles": query.roles - {JUDGE},
        "include_reverted": query.include_reverted,
    }


def _judges(store: Store, run: Run, query: CallQuery, since: int | None) -> list[dict[str, Any]]:
    """The judge records the query selects, in the order :func:`_position` gives them."""
    judged = store.judge_calls(run.id, day_index=query.day_index, since_day=since)
    days = store.held_days(run.id, {checkin.last_day_index for checkin, _, _ in judged})
    found = _judge_records(judged, days, query.include_reverted)
    return sorted(found, key=_position)


def _position(record: dict[str, Any]) -> tuple[int, int, int, int]:
    """Day, then a day's own calls before its judges, each in the order made."""
    if record["source"] == JUDGE:
        return (record["day_index"], 1, record["checkin_id"], record["_order"])
    return (record["day_index"], 0, record["_order"], 0)


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _table_records(rows: list[tuple[CallRecord, Day]], blind: set[int]) -> list[dict[str, Any]]:
    # A rejected reply whose error went back to the model is followed by the next attempt
    # of its task; one that ended the ask (out of retries, oversized, or an endpoint
    # down) is not.
    attempts = {(day.id, call.task, call.attempt) for call, day in rows}
    out = []
    for order, (call, day) in enumerate(rows):
        hidden = call.role == CallRole.PROBE and day.index in blind
        messages = [dict(m) for m in call.messages]
        if hidden:
            messages = [_blinded(m) for m in messages]
        out.append(
            {
                "source": "calls",
                "run_id": call.run_id,
                "day_index": day.index,
                "day_status": day.status,
                "external_date": day.external_date.isoformat(),
                "ordinal": call.ordinal,
                "task": call.task,
                "role": call.role,
                "depth": call.depth,
                "attempt": call.attempt,
                "entry_seq": call.entry_seq,
                "checkin_id": None,
                "probe_id": None,
                "messages": messages,
                "reply": None if hidden else call.reply,
                "hidden": hidden,
                "accepted": call.accepted,
                "error": call.error,
                "fed_back": (
                    not call.accepted and (day.id, call.task, call.attempt + 1) in attempts
                ),
                "model_version": call.model_version,
                "tokens_in": call.tokens_in,
                "tokens_out": call.tokens_out,
                "latency_ms": call.latency_ms,
                "_order": order,  # rows come in the order made, failed tries first
            }
        )
    return out


def _blinded(message: dict[str, Any]) -> dict[str, Any]:
    """A probe call's message with any earlier prediction it quotes taken out."""
    if message.get("role") == "assistant":
        return {**message, "content": None}
    return message


def _judge_records(
    judged: Iterable[tuple[CheckIn, ProbePair, Probe]],
    days: dict[int, Day],
    include_reverted: bool,
) -> Iterator[dict[str, Any]]:
    order = 0
    for checkin, pair, probe in judged:
        day = days.get(checkin.last_day_index)
        if day is None or (day.status == DayStatus.REVERTED and not include_reverted):
            continue
        calls = [c for c in (pair.judge_calls or []) if isinstance(c, dict)]
        for call in calls:
            order += 1
            attempt = int(call.get("attempt", 1))
            later = any(int(c.get("attempt", 1)) == attempt + 1 for c in calls)
            accepted = bool(call.get("accepted"))
            yield {
                "source": JUDGE,
                "_order": order,
                "run_id": checkin.run_id,
                "day_index": day.index,
                "day_status": day.status,
                "external_date": day.external_date.isoformat(),
                "ordinal": None,
                "task": call.get("task", 0),
                "role": JUDGE,
                "depth": call.get("depth", 0),
                "attempt": attempt,
                "entry_seq": None,
                "checkin_id": checkin.id,
                "probe_id": probe.id,
                "messages": list(call.get("messages") or []),
                "reply": call.get("reply", ""),
                "hidden": False,
                "accepted": accepted,
                "error": call.get("error"),
                "fed_back": not accepted and later,
                "model_version": call.get("model_version"),
                "tokens_in": call.get("tokens_in"),
                "tokens_out": call.get("tokens_out"),
                "latency_ms": call.get("latency_ms"),
            }


def calls_jsonl(store: Store, run: Run, *, include_reverted: bool = False) -> Iterator[str]:
    """The lines ``export --format jsonl --calls`` adds after the check-ins: one
    ``type: "call"`` line per call, in the same ``loopsim.export/1`` schema."""
    # The failed tries of a reverted day's index go with it, as their day lines do.
    gone = set() if include_reverted else set(store.reverted_indexes(run.id))
    for record in iter_call_records(store, run, CallQuery(include_reverted=include_reverted)):
        if record["day_index"] in gone:
            continue
        yield inert_json({"schema": SCHEMA, "type": "call", **record}, sort_keys=True)
