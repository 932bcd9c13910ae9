"""``loopsim export``: a run's record as Markdown, JSONL, an HTML report, or a chat
fine-tuning dataset, to stdout or a file written atomically.

Model text is data: every format escapes it (docs/export.md describes each).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from itertools import chain
from pathlib import Path
from typing import Annotated

import typer

from loopsim.cli.context import ID_MAX, RunArg, app_context
from loopsim.errors import SpecError
from loopsim.exports.calls import calls_jsonl
from loopsim.exports.markdown import batched_text, markdown_chunks, to_jsonl, write_atomically
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import CallRole


class ExportFormat(StrEnum):
    MD = "md"
    JSONL = "jsonl"
    HTML = "html"
    DATASET = "dataset"


def export(
    ctx: typer.Context,
    run_ref: RunArg,
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output format.")] = (
        ExportFormat.MD
    ),
    # Text, not a Path: a Path drops the trailing / of `-o out/new/`, which names a folder.
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", metavar="<path>", help="File; - or nothing for stdout."),
    ] = None,
    include_reverted: Annotated[bool, typer.Option(help="Include reverted days.")] = False,
    since_day: Annotated[
        int | None,
        typer.Option(min=1, max=ID_MAX, help="dataset: only days from this index on."),
    ] = None,
    until_day: Annotated[
        int | None,
        typer.Option(min=1, max=ID_MAX, help="dataset: only days up to this index."),
    ] = None,
    kind: Annotated[
        list[CallRole] | None,
        typer.Option("--kind", help="dataset: only these calls (repeat for several)."),
    ] = None,
    calls: Annotated[
        bool,
        typer.Option("--calls", help="jsonl: add every model call, as `type: call` lines."),
    ] = False,
    compare_parent: Annotated[
        bool,
        typer.Option(
            "--compare-parent",
            help="html: add a fork's comparison with its parent (`run compare PARENT FORK`).",
        ),
    ] = False,
) -> None:
    """Export a run's record as Markdown (for people), JSONL (for programs; with --calls,
    every model call too), a self-contained HTML report (no scripts, no network), or a
    chat fine-tuning dataset of the approved days (docs/export.md describes each)."""
    # Imported here: the dataset's filters bring the check-in schedule and its date
    # parsing, which no other command needs at start-up.
    from loopsim.exports.dataset import DatasetFilter, Tally, to_dataset

    a = app_context(ctx)
    if calls and fmt != ExportFormat.JSONL:
        raise SpecError("--calls: only for --format jsonl")
    if compare_parent and fmt != ExportFormat.HTML:
        raise SpecError("--compare-parent: only for --format html")
    similarity = a.similarity() if compare_parent else None
    if fmt != ExportFormat.DATASET:
        given = [
            name
            for name, value in (("--since-day", since_day), ("--until-day", until_day))
            if value is not None
        ] + (["--kind"] if kind else [])
        if given:
            raise SpecError(f"{', '.join(given)}: only for --format dataset")
    elif since_day is not None and until_day is not None and since_day > until_day:
        raise SpecError(f"--since-day {since_day} is after --until-day {until_day}")
    if output is not None and output != "-":
        dbmod.refuse_database_target(Path(output), a.url, "-o")
    # Written as read, inside one read transaction: the output is one snapshot of the
    # record, and memory stays flat however long the record is.
    tally = Tally()
    with a.open_db().read(snapshot=True) as session:
        store = Store(session)
        run = store.get_run(run_ref)
        chunks: Iterable[str]
        if fmt == ExportFormat.DATASET:
            filt = DatasetFilter(since_day, until_day, frozenset(kind or ()), include_reverted)
            chunks = (line + "\n" for line in to_dataset(store, run, filt, tally))
        elif fmt == ExportFormat.MD:
            chunks = markdown_chunks(store, run, include_reverted=include_reverted)
        elif fmt == ExportFormat.HTML:
            from loopsim.exports.report import html_chunks  # jinja2: only for this format

            comparison = None
            if similarity is not None:
                from loopsim.exports.compare import parent_comparison

                comparison = parent_comparison(store, run, similarity)
                if comparison is None:
                    raise SpecError(
                        f"--compare-parent: run {run.id} is not a fork of a run in this database"
                    )
            chunks = html_chunks(
                store, run, include_reverted=include_reverted, comparison=comparison
            )
        else:
            lines = to_jsonl(store, run, include_reverted=include_reverted)
            if calls:
                lines = chain(lines, calls_jsonl(store, run, include_reverted=include_reverted))
            chunks = (line + "\n" for line in lines)
        if output is None or output == "-":
            for block in batched_text(chunks):
                typer.echo(block, nl=False)
        else:
            write_atomically(output, chunks)
    if output is not None and output != "-":
        a.err.print(f"wrote {output}")
    if fmt == ExportFormat.DATASET:
        a.err.print(tally.describe(), soft_wrap=True)
