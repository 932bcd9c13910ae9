"""``loopsim record ...`` and ``loopsim export``: read, verify and export a run's record.

Model text is data: it is stripped of control characters before it reaches a terminal,
and escaped in every export.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from loopsim.cli import RunArg, _app, app, record_app
from loopsim.errors import RecordBroken
from loopsim.export import safe_text, to_jsonl, to_markdown, write_atomically
from loopsim.schemas import DayStatus
from loopsim.store import Store

# ----------------------------------------------------------------------------- record


@record_app.command("show")
def record_show(
    ctx: typer.Context,
    run_ref: RunArg,
    day: Annotated[int | None, typer.Option(help="Only this day.")] = None,
) -> None:
    """Print the record. Terminal escapes in model text are stripped."""
    a = _app(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        if day is not None:
            store.get_day(run.id, day)
        days = {d.index: d for d in store.list_days(run.id)}
        rows = store.list_entries(run.id, day_index=day)
    current = object()
    for entry, day_index, status in rows:
        if day_index != current:
            current = day_index
            if day_index is None:
                a.out.print(Text("\noutside any day", style="bold"))
            else:
                d = days[day_index]
                mark = "" if status == DayStatus.COMMITTED else f"  [{status}]"
                a.out.print(Text(f"\nday {day_index}  {d.external_date}{mark}", style="bold"))
        style = "strike" if status == DayStatus.REVERTED else ""
        a.out.print(
            Text(f"#{entry.seq} {entry.kind} · {safe_text(entry.title)}", style=style + " cyan")
        )
        a.out.print(Text(safe_text(entry.body), style=style))
    failed = [
        d for d in days.values() if d.status == DayStatus.FAILED and (day is None or d.index == day)
    ]
    for d in failed:
        a.out.print(Text(f"\nday {d.index}  failed: {safe_text(d.error or '')}", style="red"))
    if not rows and not failed:
        a.err.print("no entries yet")


@record_app.command("verify")
def record_verify(ctx: typer.Context, run_ref: RunArg) -> None:
    """Recompute the SHA-256 chain; name the first broken link and exit 1 if any."""
    a = _app(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        result = store.verify_chain(run.id)
    if not result.ok:
        assert result.broken is not None
        raise RecordBroken(
            f"run {run.id}: broken link at {result.broken.describe()}; "
            f"{result.checked} entries before it verify"
        )
    a.out.print(f"ok: run {run.id}, {result.checked} entries, head {result.head[:16]}")


# ----------------------------------------------------------------------------- export


class ExportFormat(StrEnum):
    MD = "md"
    JSONL = "jsonl"


@app.command("export")
def export(
    ctx: typer.Context,
    run_ref: RunArg,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output format.")] = (
        ExportFormat.MD
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File; - or nothing for stdout.")
    ] = None,
    include_reverted: Annotated[bool, typer.Option(help="Include reverted days.")] = False,
) -> None:
    """Export a run's record as Markdown (for people) or JSONL (for programs)."""
    a = _app(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        if fmt == ExportFormat.MD:
            chunks = [to_markdown(store, run, include_reverted=include_reverted)]
        else:
            chunks = [
                line + "\n" for line in to_jsonl(store, run, include_reverted=include_reverted)
            ]
    if output is None or str(output) == "-":
        for chunk in chunks:
            typer.echo(chunk, nl=False)
    else:
        write_atomically(output, chunks)
        a.err.print(f"wrote {output}")
