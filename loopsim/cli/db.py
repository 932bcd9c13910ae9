"""``loopsim db ...``: create and migrate the database (``upgrade``, ``downgrade``),
show where it is (``status``), prove a record whole (``check``), and copy it while it is
in use (``backup``)."""

from __future__ import annotations

import re
from typing import Annotated

import typer
from rich.text import Text

from loopsim.cli.context import JsonOpt, app_context
from loopsim.errors import LoopsimError, SchemaOutdated, SchemaTooNew, SpecError
from loopsim.exports.markdown import safe_text
from loopsim.record import db as dbmod
from loopsim.record import maintenance
from loopsim.record.store import Store

app = typer.Typer(no_args_is_help=True, help="Create, migrate and inspect the database.")


_REVISION = re.compile(r"(?:\w+(?:@\w+)?)?(?:[+-]\d+)?")


def _revision(value: str) -> str:
    """Alembic asserts, rather than reports, on some malformed revisions ('', '@')."""
    if not value or not _REVISION.fullmatch(value):
        raise SpecError(
            f"{value!r} is not a revision: give head, base, an id such as 0001, "
            "or a step such as -1"
        )
    return value


@app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create the database if it is missing, or migrate it to the current schema.

    An existing SQLite file is backed up beside itself before it is migrated. On
    PostgreSQL it ends with ANALYZE of the record's tables, migrated or not, so the
    planner has statistics (run it after restoring a dump)."""
    from alembic.util import CommandError

    a = app_context(ctx)
    try:
        result = dbmod.upgrade(a.url, _revision(revision))
    except CommandError as exc:  # alembic's own errors name unknown revisions
        unknown = re.search(r"Can't locate revision identified by '([^']+)'", str(exc))
        if unknown and unknown[1] != revision:  # not the one asked for: the database's own
            where = dbmod.display_url(dbmod.normalize_url(a.url))
            raise SchemaTooNew(
                f"{where} is at schema {unknown[1]}, which this loopsim does not know; "
                "upgrade loopsim itself"
            ) from None
        raise SpecError(f"cannot upgrade to {revision!r}: {exc}") from None
    if result.created or result.before is None:  # a new file, or an empty one
        a.err.print(f"created {result.where} at schema {result.after}")
    elif result.before == result.after:
        a.err.print(f"{result.where} is already at schema {result.after}")
    else:
        backup = f" (backup: {result.backup})" if result.backup else ""
        a.err.print(f"upgraded {result.where} from {result.before} to {result.after}{backup}")


@app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001, or base.")],
) -> None:
    """Migrate the schema down (for recovery and testing). A SQLite file is backed up
    first; loopsim refuses to run on the result until `loopsim db upgrade`."""
    a = app_context(ctx)
    try:
        result = dbmod.downgrade(a.url, _revision(revision))
    except Exception as exc:  # alembic's own errors name unknown revisions
        if isinstance(exc, LoopsimError):
            raise
        from alembic.util import CommandError

        if isinstance(exc, CommandError):
            raise SpecError(f"cannot downgrade to {revision!r}: {exc}") from None
        raise
    backup = f" (backup: {result.backup})" if result.backup else ""
    a.err.print(f"downgraded {result.where} from {result.before} to {result.after}{backup}")


@app.command("status")
def db_status(ctx: typer.Context) -> None:
    """Show where the database is, whether its schema is current, and when `db check`
    last checked it. Exits 1 when the schema is not this loopsim's, saying which it is
    and what to do."""
    a = app_context(ctx)
    try:
        database = a.open_db()
    except (SchemaOutdated, SchemaTooNew) as exc:  # a status to show, not a failure to say
        a.out.print(Text(safe_text(exc.message)))
        raise typer.Exit(1) from None
    with database.read() as session:
        store = Store(session)
        runs = len(store.list_runs())
        last = store.last_integrity_check()
    a.out.print(
        f"{database.where}: schema {dbmod.head_revision()} (current), "
        f"{runs} {'run' if runs == 1 else 'runs'}"
    )
    if last is None:
        a.out.print("last checked: never; `loopsim db check` checks it")
        return
    found = "ok" if last.ok else f"{last.problems} problem{'s' if last.problems > 1 else ''}"
    kind = "quick check" if last.quick else "integrity check"
    a.out.print(f"last checked: {last.checked_at.isoformat(timespec='seconds')} ({kind}, {found})")


@app.command("check")
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
    # Imported here: only this command draws a progress bar.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    a = app_context(ctx)
    columns = (TextColumn("verifying chains"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns, console=a.err, transient=True, disable=not a.err.is_terminal
    ) as progress:
        task = progress.add_task("runs", total=None)

        def on_run(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = maintenance.check(
            a.url,
            quick=quick,
            busy_timeout_ms=a.settings.busy_timeout_ms,
            on_run=on_run,
            chain_key=a.chain_key,
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
    if report.keyed_unverified:
        count = len(report.keyed_unverified)
        a.err.print(
            f"{count} keyed {'run' if count == 1 else 'runs'} not verified (their chains "
            "are keyed; set LOOPSIM_CHAIN_KEY to verify them)",
            soft_wrap=True,
        )
    if report.ok:
        unrecorded = "" if report.recorded else " (read-only here: not recorded for db status)"
        a.err.print(
            f"{report.where}: {kind} ok, foreign keys ok, {report.runs} "
            f"{'run' if report.runs == 1 else 'runs'} and {report.entries} entries "
            f"verified{unrecorded}",
            soft_wrap=True,
        )
        return
    count = len(report.problems)
    a.err.print(
        f"{report.where}: {count} {'problem' if count == 1 else 'problems'} found", soft_wrap=True
    )
    raise typer.Exit(1)


@app.command("backup")
def db_backup(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(metavar="PATH", help="Where to write the copy.")],
    force: Annotated[bool, typer.Option("--force", help="Replace PATH if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a SQLite database while it is in use, as it stood at one moment.

    The copy is made through SQLite's online backup API (so `loopsim serve` may keep
    writing), checked like `db check` before it takes its name, and left as one file.
    For PostgreSQL use pg_dump."""
    a = app_context(ctx)
    result = maintenance.backup(
        a.url,
        path,
        force=force,
        busy_timeout_ms=a.settings.busy_timeout_ms,
        chain_key=a.chain_key,
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
