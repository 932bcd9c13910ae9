"""``loopsim calls RUN``: every model call of a run's days, in the manner of ``llm logs``.

Each call shows its day, its role in the day (the report, a sub-question, a critic, a
digest, a probe prediction, a judge), its attempt, whether its reply was accepted, the
error fed back to the model when it was not, its tokens and time, and then the exact
messages sent and the reply. ``--json`` prints one JSON array of the records
:mod:`loopsim.exports.calls` builds (``docs/export.md`` gives the fields).

Model text is data: it is stripped of control characters before it reaches a terminal.
A probe's prediction stays hidden until the human's blind answer is stored.
"""

from __future__ import annotations

import textwrap
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.text import Text

from loopsim.cli.context import ID_MAX, RunArg, app_context
from loopsim.exports.calls import CallQuery, call_records
from loopsim.exports.markdown import safe_text
from loopsim.record.store import Store
from loopsim.text import plural


class Role(StrEnum):
    """A call's role in its day (``CallRole``), or a check-in's judge."""

    DAY = "day"
    SUBQUESTION = "subquestion"
    CRITIC = "critic"
    DIGEST = "digest"
    PROBE = "probe"
    JUDGE = "judge"


HIDDEN = "hidden until the human's blind answers to this check-in are stored"


def calls(
    ctx: typer.Context,
    run_ref: RunArg,
    day: Annotated[int | None, typer.Option(min=1, max=ID_MAX, help="Only this day.")] = None,
    role: Annotated[
        list[Role] | None,
        typer.Option("--role", help="Only calls of this role (repeat for several)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, max=ID_MAX, help="Only the latest K calls."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON array instead of text.")
    ] = False,
) -> None:
    """Show a run's model calls, oldest first: role, attempt, accepted or the error fed
    back, tokens and time, then the exact messages and the reply. Judge calls are shown
    with the last day of their check-in."""
    a = app_context(ctx)
    query = CallQuery(day, frozenset(r.value for r in role or ()), limit)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        if day is not None:
            store.get_day(run.id, day)
        records = call_records(store, run, query)
    if not records:
        where = f"day {day} of run {run.id}" if day is not None else f"run {run.id}"
        which = f" of role {', '.join(sorted(query.roles))}" if query.roles else ""
        a.err.print(Text(f"no calls{which} recorded for {where}"), soft_wrap=True)
    if as_json:
        a.print_json(records)
        return
    for number, record in enumerate(records):
        if number:
            a.out.print()
        _print_call(a.out, record)
    if records:
        a.err.print(plural(len(records), "call"))


def _heading(record: dict[str, Any]) -> Text:
    day = f"day {record['day_index']}  {record['external_date']}"
    if record["day_status"] != "committed":
        day += f" [{record['day_status']}]"
    if record["source"] == "judge":
        what = f"judge of check-in {record['checkin_id']}, probe #{record['probe_id']}"
    else:
        what = f"call {record['ordinal']}  {record['role']}"
        if record["task"]:
            what += f" (task {record['task']}, depth {record['depth']})"
    text = Text(f"{day}  {what}  attempt {record['attempt']}  ", style="bold cyan")
    if record["accepted"]:
        verdict = "accepted"
        if record["entry_seq"] is not None:
            verdict += f" as #{record['entry_seq']}"
        text.append(verdict, style="green")
    else:
        text.append("rejected", style="red")
    return text


def _cost(record: dict[str, Any]) -> str:
    parts = [safe_text(str(record["model_version"] or "unknown model"))]
    for key, label in (("tokens_in", "tokens in"), ("tokens_out", "out")):
        if record[key] is not None:
            parts.append(f"{record[key]} {label}")
    if record["latency_ms"] is not None:
        parts.append(f"{record['latency_ms']} ms")
    return "  " + " · ".join(parts)


def _block(out: Any, label: str, body: str | None, style: str = "") -> None:
    out.print(Text(f"  ── {label}", style="bold " + style))
    if body is not None:
        out.print(Text(textwrap.indent(safe_text(body), "    "), style=style))


def _print_call(out: Any, record: dict[str, Any]) -> None:
    out.print(_heading(record))
    out.print(Text(_cost(record), style="dim"))
    for message in record["messages"]:
        content = message.get("content")
        role = safe_text(str(message.get("role", "?")))
        if content is None:
            _block(out, f"{role}: {HIDDEN}", None, "yellow")
        else:
            _block(out, role, str(content))
    if record["hidden"]:
        _block(out, f"reply: {HIDDEN}", None, "yellow")
    else:
        _block(out, "reply", record["reply"] or "")
    if record["error"] is not None:
        if record["fed_back"]:
            label = f"error, fed back to attempt {record['attempt'] + 1}"
        else:
            label = "error, not retried"
        _block(out, label, record["error"], "red")
