"""``loopsim demo``: the whole loop in one command, from an empty folder to a verified
record and a report, and how to run this loopsim again (:func:`own_command`)."""

from __future__ import annotations

import contextlib
import sys
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from loopsim.cli.context import app_context
from loopsim.cli.stepping import set_status, step_days
from loopsim.errors import EXIT_INTERRUPTED, LoopsimError
from loopsim.exports.markdown import check_output, markdown_chunks, write_atomically
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import DayStatus, RunSpec, RunStatus, load_spec
from loopsim.text import plural


def own_command(argv0: str | None = None) -> str:
    """How to run this loopsim again from the current folder, as the user would type it:
    ``loopsim`` if that is on PATH and is this one, else the script as it was invoked
    (``.venv/bin/loopsim``), else ``PYTHON -m loopsim``."""
    import shlex
    import shutil

    argv0 = sys.argv[0] if argv0 is None else argv0
    if Path(argv0).name == "loopsim":
        found = shutil.which("loopsim")
        if found and Path(found).resolve() == Path(argv0).resolve():
            return "loopsim"
        return shlex.quote(argv0 if "/" in argv0 else str(Path(argv0).resolve()))
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        relative = python.absolute().relative_to(Path.cwd())
        python = relative if len(relative.parts) < len(python.parts) else python
    shown = str(python) if python.is_absolute() else f"./{python}"
    return f"{shlex.quote(shown)} -m loopsim"


def _db_option(where: str) -> str:
    import shlex

    return f"--db {shlex.quote(where)}"


def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", "-n", min=1, help="Days to run.")] = 3,
    spec_path: Annotated[
        Path | None, typer.Option("--spec", help="Run spec; defaults to a built-in one.")
    ] = None,
    # Text, not a Path: a Path drops the trailing / of `--report out/new/`, a folder.
    report: Annotated[
        str, typer.Option(metavar="<path>", help="Where to write the Markdown report.")
    ] = "demo-report.md",
) -> None:
    """Create the database if needed, start a run, step it, verify and export it."""
    a = app_context(ctx)
    if spec_path is None:
        spec = RunSpec.model_validate(
            __import__("tomllib").loads(files("loopsim").joinpath("demo.toml").read_text())
        )
    else:
        spec = load_spec(spec_path)
    dbmod.refuse_database_target(Path(report), a.url, "--report")
    check_output(report, "--report")  # before minutes of model calls, not after
    result = dbmod.upgrade(a.url)
    a.err.print(f"database: {result.where} (schema {result.after})")
    database = a.open_db()
    with database.write() as session:
        run = Store(session).create_run(
            spec, name="demo", model=spec.model.name or a.settings.model
        )
        run_id, model = run.id, run.model
    a.err.print(f"run {run_id} on {model}: {plural(days, 'day')}")
    committed = tries = 0
    # A small model fails some days; each failure stays in the record, and the demo
    # resumes the run, as a person would, until enough days are committed.
    while committed < days and tries < days * 4:
        results = step_days(a, run_id, days - committed, fail=False)
        committed += sum(r.status == DayStatus.COMMITTED for r in results)
        tries += len(results)
        if a.stopped:  # a first Ctrl-C: the days so far are reported, and no more run
            break
        if a.opened_checkin is not None:
            a.err.print(
                f"check-in {a.opened_checkin} opened; the run waits for a human: "
                f"`loopsim checkin review {a.opened_checkin}`"
            )
            break
        if results and results[-1].status == DayStatus.FAILED:
            a.err.print(f"day {results[-1].index} failed ({results[-1].error}); trying again")
            if results[-1].run_failed:
                set_status(a, run_id, {RunStatus.FAILED}, RunStatus.RUNNING, None)
        elif not results:
            break
    with database.read(snapshot=True) as session:
        store = Store(session)
        verified = store.verify_chain(run_id)
        write_atomically(report, markdown_chunks(store, store.get_run(run_id)), "--report")
    if not verified.ok:
        assert verified.broken is not None
        raise LoopsimError(f"demo record does not verify: {verified.broken.describe()}")
    a.err.print(
        f"{plural(committed, 'day')} committed in {plural(tries, 'try', 'tries')}; "
        f"record verified: {plural(verified.checked, 'entry', 'entries')}"
    )
    a.err.print(f"report: {report}")
    # One line however narrow the terminal, so that it can be copied and run as printed.
    next_command = f"{own_command()} {_db_option(result.where)} record show {run_id}"
    a.err.print(f"next: {next_command}", soft_wrap=True)
    a.out.print(run_id)
    if a.stopped:
        a.err.print(f"stopped by Ctrl-C after {plural(committed, 'day')} of {days}")
        raise typer.Exit(EXIT_INTERRUPTED)
