"""``loopsim db check`` and ``loopsim db backup``: proving a record whole, and copying it
while it is in use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from loopsim.cli import JsonOpt, _app, db_app
from loopsim.exports.markdown import safe_text
from loopsim.record import maintenance


@db_app.command("check")
def db_check(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option("--quick", help="SQLite's quick_check instead of integrity_check.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the database: SQLite's integrity check and foreign keys, and every run's
    hash chain. One line per problem on stdout; exit 1 if there is any.

    A damaged file is only read, never written; a sound one records when it was checked,
    which `db status` shows."""
    a = _app(ctx)
    columns = (TextColumn("verifying chains"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns, console=a.err, transient=True, disable=not a.err.is_terminal
    ) as progress:
        task = progress.add_task("runs", total=None)

        def on_run(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = maintenance.check(
            a.url, quick=quick, busy_timeout_ms=a.settings.busy_timeout_ms, on_run=on_run
        )
    if as_json:
        a.print_json(
            {
                "database": report.where,
                "quick": report.quick,
                "ok": report.ok,
                "problems": report.problems,
                "runs": report.runs,
                "entries": report.entries,
                "recorded": report.recorded,
            }
        )
    else:
        for problem in report.problems:
            a.out.print(Text(" ".join(safe_text(problem).split())))
    kind = "quick check" if quick else "integrity check"
    if report.ok:
        a.err.print(
            f"{report.where}: {kind} ok, foreign keys ok, {report.runs} "
            f"{'run' if report.runs == 1 else 'runs'} and {report.entries} entries verified",
            soft_wrap=True,
        )
        return
    count = len(report.problems)
    a.err.print(
        f"{report.where}: {count} {'problem' if count == 1 else 'problems'} found", soft_wrap=True
    )
    raise typer.Exit(1)


@db_app.command("backup")
def db_backup(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Where to write the copy.")],
    force: Annotated[bool, typer.Option("--force", help="Replace PATH if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a SQLite database while it is in use, as it stood at one moment.

    The copy is made through SQLite's online backup API (so `loopsim serve` may keep
    writing), checked like `db check` before it takes its name, and left as one file.
    For PostgreSQL use pg_dump."""
    a = _app(ctx)
    result = maintenance.backup(
        a.url, path, force=force, busy_timeout_ms=a.settings.busy_timeout_ms
    )
    report = result.report
    if as_json:
        a.print_json(
            {
                "source": result.source,
                "backup": str(result.target),
                "bytes": result.bytes,
                "seconds": round(result.seconds, 3),
                "runs": {
                    run_id: {"entries": count, "head": head}
                    for run_id, (count, head) in report.heads.items()
                },
            }
        )
    a.err.print(
        f"backed up {result.source} to {result.target}: {report.runs} "
        f"{'run' if report.runs == 1 else 'runs'}, {report.entries} entries verified, "
        f"{result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s",
        soft_wrap=True,
    )
