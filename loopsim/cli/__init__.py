"""The ``loopsim`` command line.

One error boundary (:class:`_Group`) turns every :class:`LoopsimError` into one line on
stderr and its exit code. Data goes to stdout; progress and messages go to stderr, so
``loopsim run create spec.toml`` can be captured and ``--json`` piped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import typer
from alembic.util import CommandError
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import (
    BadParameter,
    MissingParameter,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)
from typer.core import TyperGroup

from loopsim import __version__
from loopsim.chat.handle import ChatFactory, build_chat, check_model_id
from loopsim.checkin import drift
from loopsim.config import Settings
from loopsim.errors import (
    EXIT_AT_CHECKIN,
    InvalidState,
    LoopsimError,
    ModelOutputInvalid,
    SpecError,
)
from loopsim.exports.markdown import inert_json, safe_text, to_markdown, write_atomically
from loopsim.loop import DayResult, Loop
from loopsim.record import db as dbmod
from loopsim.record.leases import driver, live_holder
from loopsim.record.store import Store
from loopsim.record.tables import Run
from loopsim.schemas import DayStatus, RunSpec, RunStatus, load_spec
from loopsim.text import plural


class _Group(TyperGroup):
    """The error boundary: a known error is one line and an exit code, never a traceback."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 reach argv as lone surrogates (surrogateescape), which
        # no database, file or terminal write can encode: refuse them here, once.
        for arg in args:
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                shown = " ".join(
                    safe_text(arg.encode("utf-8", "backslashreplace").decode()).split()
                )
                typer.echo(f"error: argument '{shown[:60]}' is not UTF-8 text", err=True)
                ctx.exit(2)
        ctx.meta["loopsim.argv"] = list(args)
        try:
            return super().parse_args(ctx, args)  # type: ignore[no-any-return]
        except UsageError as exc:
            if isinstance(exc, NoArgsIsHelpError):
                raise  # bare `loopsim`: the help screen
            typer.echo(f"error: {usage_line(exc, args)}", err=True)
            raise typer.Exit(exc.exit_code) from None

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # public alias
        try:
            return super().invoke(ctx)
        except LoopsimError as exc:
            line = " ".join(safe_text(exc.message).split())
            typer.echo(f"error: {line}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # Typer would exit 130 without a word. Every write is one transaction, so
            # what was in flight is rolled back.
            typer.echo("\ninterrupted", err=True)
            ctx.exit(130)
        except UsageError as exc:
            # A sub-command's options are parsed here, inside the root's invoke.
            if isinstance(exc, NoArgsIsHelpError):
                raise  # `loopsim run`: that group's help screen
            typer.echo(f"error: {usage_line(exc, ctx.meta.get('loopsim.argv', []))}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            if exc.filename is None and exc.errno == errno.EPIPE:
                # A reader that stopped reading (`| head -1`) got what it wanted: end
                # quietly, exit 0, as `cat file | head -1` does under `set -o pipefail`.
                _silence_stdout()
                ctx.exit(0)
            # A file loopsim opened should never get here unhandled (a bug).
            if exc.filename is not None or exc.errno not in _STDOUT_ERRNOS:
                raise
            _silence_stdout()
            typer.echo(f"error: cannot write the output: {exc.strerror}", err=True)
            ctx.exit(1)
        finally:
            if isinstance(ctx.obj, AppContext):
                ctx.obj.close()


# Options of `loopsim` itself, which go before the command.
GLOBAL_OPTIONS = {"--db": True, "--version": False}  # name: takes a value


def _command_path(ctx: Any) -> str:
    """``loopsim run step``, whatever the program was called (``python -m loopsim``)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return " ".join(["loopsim", *reversed(names)])


def _moved_to_front(argv: list[str], option: str) -> list[str]:
    """``argv`` with the global ``option`` (and its value) moved before the command."""
    rest = list(argv)
    for i, arg in enumerate(rest):
        if arg == option or arg.startswith(option + "="):
            takes_value = GLOBAL_OPTIONS[option] and "=" not in arg
            moved = rest[i : i + 2] if takes_value else rest[i : i + 1]
            del rest[i : i + len(moved)]
            return moved + rest
    return rest


# Typer's phrasing of bad values, and loopsim's.
_PLAIN = [
    (re.compile(r"Input should be a valid integer.*"), "give a whole number"),
    (re.compile(r"Input should be a valid number.*"), "give a number"),
    (re.compile(r"Input should be greater than or equal to (\S+)"), r"give \1 or more"),
    (re.compile(r"Input should be less than or equal to (\S+)"), r"give \1 or less"),
    (re.compile(r"Input should be greater than (\S+)"), r"give more than \1"),
    (re.compile(r"Input should be less than (\S+)"), r"give less than \1"),
    (re.compile(r"^Value error, "), ""),
]


def _param_label(param: Any) -> str:
    """``--days`` for an option; ``RUN`` (its metavar) for an argument."""
    if param.param_type_name == "option":
        return str(param.opts[0])
    metavar = getattr(param, "metavar", None) or param.name or ""
    return str(metavar).upper().rstrip(".")


def usage_line(exc: UsageError, argv: list[str]) -> str:
    """Click's usage error (a usage screen, a hint and an ``Error:`` line) as one line in
    loopsim's words, naming the command and how to get its help."""
    ctx = exc.ctx
    path = _command_path(ctx)
    helps = f"`{path} --help` shows how to use it"
    if isinstance(exc, NoSuchOption):
        name = exc.option_name.split("=", 1)[0]
        if name in GLOBAL_OPTIONS and ctx is not None and ctx.parent is not None:
            moved = _moved_to_front(argv, name) if GLOBAL_OPTIONS[name] else [name]
            fixed = shlex.join(["loopsim", *moved])
            return f"{name} goes before the command: `{fixed}`"
        maybe = sorted(exc.possibilities or [])
        also = f" (did you mean {' or '.join(maybe)}?)" if maybe else ""
        return f"{path} has no option {name}{also}; {helps}"
    if isinstance(exc, MissingParameter) and exc.param is not None:
        return f"{path} needs {_param_label(exc.param)}; {helps}"
    if isinstance(exc, BadParameter):
        message = str(exc.message).strip().rstrip(".")
        for pattern, plain in _PLAIN:
            message = pattern.sub(plain, message)
        bad = exc.param
        if exc.param_hint is not None:
            hints = exc.param_hint
            label = hints if isinstance(hints, str) else next(iter(hints), "")
        elif bad is not None:
            label = _param_label(bad)
        else:
            label = path
        return f"{label}: {message}"
    message = exc.format_message().strip().rstrip("?.")
    message, _, suggested = message.partition(". Did you mean ")
    also = f" (did you mean {suggested}?)" if suggested else ""
    return f"{message[:1].lower()}{message[1:]}{also}; {helps}"


# Errors writing the output stream: the disk or quota is full, or the device failed.
_STDOUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG}


def _silence_stdout() -> None:
    """Point stdout at nothing, so the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class _Stdout(Console):
    """stdout. A reader that stopped reading (`| head -1`) ends the command quietly with
    exit 0 (rich would exit 1); the boundary in _Group.invoke does the rest."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


@dataclass
class AppContext:
    """What every command needs, built once per invocation. Tests pass their own."""

    settings: Settings
    chat_factory: ChatFactory | None = None
    db_url: str | None = None
    opened_checkin: int | None = None
    similarity_fn: drift.Similarity | None = None
    _database: dbmod.Database | None = field(default=None, repr=False)
    # No markup or emoji codes: printed paths, names and model text may hold "[/x]" or
    # ":smile:", which must come out as written (a stray closing tag would crash).
    out: Console = field(
        default_factory=lambda: _Stdout(highlight=False, soft_wrap=True, markup=False, emoji=False)
    )
    err: Console = field(
        default_factory=lambda: Console(stderr=True, highlight=False, markup=False, emoji=False)
    )

    @property
    def url(self) -> str:
        return self.settings.database_url if self.db_url is None else self.db_url

    def open_db(self) -> dbmod.Database:
        """The invocation's one Database, opened at first use and kept until it ends."""
        if self._database is not None and self._database.url == dbmod.normalize_url(self.url):
            return self._database
        self.close()
        self._database = dbmod.Database.open(
            self.url, busy_timeout_ms=self.settings.busy_timeout_ms
        )
        return self._database

    def close(self) -> None:
        if self._database is not None:
            database, self._database = self._database, None
            database.dispose()

    def chats(self) -> ChatFactory:
        return self.chat_factory or build_chat(self.settings)

    def similarity(self) -> drift.Similarity:
        return self.similarity_fn or drift.from_settings(self.settings.embeddings)

    def print_json(self, data: Any) -> None:
        """Indented JSON on stdout. Model text in it keeps every character, escaped so
        that no terminal acts on it (rich's print_json would let C1 controls through)."""
        self.out.print(Text(inert_json(data, indent=2)), soft_wrap=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LOOPSIM_" + str(first["loc"][0]).upper() if first["loc"] else "LOOPSIM_*"
        raise SpecError(f"{name}: {first['msg'].lower()}") from None


app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Groundhog-day iterated amplification: a memoryless researcher, a hash-chained "
    "record, and human check-ins.",
)
db_app = typer.Typer(no_args_is_help=True, help="Create, migrate and inspect the database.")
run_app = typer.Typer(no_args_is_help=True, help="Create, list, step and control runs.")
record_app = typer.Typer(no_args_is_help=True, help="Read and verify a run's written record.")
checkin_app = typer.Typer(no_args_is_help=True, help="Review and decide human check-ins.")
probe_app = typer.Typer(no_args_is_help=True, help="The run's bank of probe questions.")
app.add_typer(db_app, name="db")
app.add_typer(checkin_app, name="checkin")
app.add_typer(probe_app, name="probe")
app.add_typer(run_app, name="run")
app.add_typer(record_app, name="record")

RunArg = Annotated[
    str, typer.Argument(metavar="RUN", help="Run id, or a unique prefix of it (4+ characters).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# The largest id, day or sequence number the INTEGER columns of every backend hold; a
# larger one is a usage error rather than a driver's overflow.
ID_MAX = 2**31 - 1


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loopsim {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Database URL or SQLite file path. [env: LOOPSIM_DATABASE_URL; "
            "default: loopsim.db]",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    if ctx.obj is None:
        ctx.obj = AppContext(_settings())
    if db is not None:
        ctx.obj.db_url = db


def _app(ctx: typer.Context) -> AppContext:
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


# --------------------------------------------------------------------------------- db


_REVISION = re.compile(r"(?:\w+(?:@\w+)?)?(?:[+-]\d+)?")


def _revision(value: str) -> str:
    """Alembic asserts, rather than reports, on some malformed revisions ('', '@')."""
    if not value or not _REVISION.fullmatch(value):
        raise SpecError(
            f"{value!r} is not a revision: give head, base, an id such as 0001, "
            "or a step such as -1"
        )
    return value


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create the database if it is missing, or migrate it to the current schema.

    An existing SQLite file is backed up beside itself before it is migrated."""
    a = _app(ctx)
    try:
        result = dbmod.upgrade(a.url, _revision(revision))
    except CommandError as exc:  # alembic's own errors name unknown revisions
        raise SpecError(f"cannot upgrade to {revision!r}: {exc}") from None
    if result.created:
        a.err.print(f"created {result.where} at schema {result.after}")
    elif result.before == result.after:
        a.err.print(f"{result.where} is already at schema {result.after}")
    else:
        backup = f" (backup: {result.backup})" if result.backup else ""
        a.err.print(f"upgraded {result.where} from {result.before} to {result.after}{backup}")


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 0001, or base.")],
) -> None:
    """Migrate the schema down (for recovery and testing). A SQLite file is backed up
    first; loopsim refuses to run on the result until `loopsim db upgrade`."""
    a = _app(ctx)
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


@db_app.command("status")
def db_status(ctx: typer.Context) -> None:
    """Show where the database is, whether its schema is current, and when `db check`
    last checked it."""
    a = _app(ctx)
    database = a.open_db()
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


# -------------------------------------------------------------------------------- run


def _run_summary(store: Store, run: Run) -> dict[str, Any]:
    tokens_in, tokens_out = store.token_totals(run.id)
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "status_reason": run.status_reason,
        "model": run.model,
        "days_committed": store.count_days(run.id, DayStatus.COMMITTED),
        "days_failed": store.count_days(run.id, DayStatus.FAILED),
        "days_reverted": store.count_days(run.id, DayStatus.REVERTED),
        "next_day": store.next_day_index(run.id),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "worker": live_holder(store, run),
        "driver": driver(store, run),
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
    }


@run_app.command("create")
def run_create(
    ctx: typer.Context,
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Run spec (TOML).")],
    name: Annotated[
        str | None, typer.Option(help="Name; defaults to the spec's file name.")
    ] = None,
) -> None:
    """Create a run from a spec and print its id."""
    a = _app(ctx)
    spec = load_spec(spec_path)  # validated before the database is touched
    model = spec.model.name or a.settings.model
    # Checked now, not at the first step: a typo is refused before anything is written.
    check_model_id(model, "[model] name" if spec.model.name else "LOOPSIM_MODEL")
    database = a.open_db()
    with database.write() as session:
        run = Store(session).create_run(spec, name=name or spec_path.stem, model=model)
        run_id = run.id
    a.out.print(run_id)


@run_app.command("delete")
def run_delete(
    ctx: typer.Context,
    run_ref: RunArg,
    force: Annotated[
        bool, typer.Option("--force", help="Delete it even if it has committed days.")
    ] = False,
) -> None:
    """Delete a run and all of its rows (days, entries, calls, probes, check-ins) in one
    transaction. A run with committed days needs --force; no other run is touched."""
    a = _app(ctx)
    with a.open_db().write() as session:
        store = Store(session)
        run = store.get_run(run_ref, lock=True)
        holder = live_holder(store, run)
        if holder is not None:
            raise InvalidState(
                f"run {run.id} is held by worker {holder}; `loopsim run pause {run.id}` "
                "first, then delete it once the worker lets go"
            )
        committed = store.count_days(run.id, DayStatus.COMMITTED)
        if committed and not force:
            raise InvalidState(
                f"run {run.id} has {plural(committed, 'committed day')}; "
                f"`loopsim run delete {run.id} --force` deletes it with its record"
            )
        run_id = run.id
        counts = store.delete_run(run_id)
    a.err.print(
        f"deleted run {run_id}: {plural(counts['days'], 'day')}, "
        f"{plural(counts['entries'], 'entry', 'entries')}"
    )


@run_app.command("list")
def run_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List runs, newest last, with their status and what drives each: `run step`, or
    `serve` (with the worker holding it now, if one does)."""
    a = _app(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        rows = [_run_summary(store, run) for run in store.list_runs()]
    if as_json:
        a.print_json(rows)
        return
    # Fits the terminal (80 columns included): no edge padding, the driver column only
    # when something drives a run, and the name gives way (ellipsis) before anything else.
    drivers = any(row["driver"] for row in rows)
    status_w = max((len(row["status"]) for row in rows), default=6)
    days_w = max((len(str(row["days_committed"])) for row in rows), default=4)
    model_w = min(max((len(row["model"]) for row in rows), default=5), 24)
    driver_w = min(max((len(row["driver"] or "") for row in rows), default=0), 16)
    gaps = 2 * (5 if drivers else 4)
    room = a.out.width - 26 - max(status_w, 6) - max(days_w, 4) - model_w - gaps
    room -= max(driver_w, 6) if drivers else 0
    table = Table(box=None, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=26)
    table.add_column("name", overflow="ellipsis", no_wrap=True, max_width=max(4, min(24, room)))
    table.add_column("status", no_wrap=True)
    table.add_column("days", justify="right", no_wrap=True)
    table.add_column("model", overflow="fold")
    if drivers:
        table.add_column("driver", overflow="fold")
    for row in rows:
        cells = [
            row["id"],
            Text(safe_text(row["name"])),
            row["status"],
            str(row["days_committed"]),
            Text(safe_text(row["model"])),
        ]
        table.add_row(*cells, *([row["driver"] or "-"] if drivers else []))
    a.out.print(table if rows else "no runs yet; `loopsim run create SPEC` makes one")


@run_app.command("show")
def run_show(ctx: typer.Context, run_ref: RunArg, as_json: JsonOpt = False) -> None:
    """Show one run: status, persona, time policy, days, tokens."""
    a = _app(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        info = _run_summary(store, run)
        info["chain_head"] = store.chain_head(run.id)[1]
        spec = dict(run.spec)
    info["spec"] = spec
    if as_json:
        a.print_json(info)
        return
    for key in (
        "id",
        "name",
        "status",
        "status_reason",
        "model",
        "days_committed",
        "days_failed",
        "days_reverted",
        "next_day",
        "tokens_in",
        "tokens_out",
        "worker",
        "created_at",
        "chain_head",
    ):
        if info[key] is not None:
            a.out.print(Text(f"{key:15} {safe_text(str(info[key]))}"))
    a.out.print(Text(f"{'persona':15} {safe_text(spec['persona']['name'])}"))
    a.out.print(Text(f"{'time':15} {json.dumps(spec['time'])}"))


@contextlib.contextmanager
def _stop_on_interrupt(err: Console) -> Iterator[threading.Event]:
    """First Ctrl-C: finish the day in flight, then stop. Second: abandon it."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print("stopping after this day; Ctrl-C again abandons it (nothing half-written)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _step(a: AppContext, run_ref: str, days: int, *, fail: bool = True) -> list[DayResult]:
    database = a.open_db()
    loop = Loop(database, a.settings, a.chats(), a.similarity())
    results: list[DayResult] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        _stop_on_interrupt(a.err) as stop,
        Progress(*columns, console=a.err, transient=False) as progress,
    ):
        task = progress.add_task("stepping", total=days)

        def on_day(result: DayResult) -> None:
            results.append(result)
            progress.advance(task)
            progress.console.print(
                f"day {result.index}  {result.external_date}  {result.status}  "
                f"{plural(result.entries, 'entry', 'entries')}  {result.latency_ms / 1000:.1f} s"
            )

        try:
            loop.run_days(run_ref, days, on_day=on_day, should_stop=stop.is_set)
            a.opened_checkin = loop.opened_checkin
        except KeyboardInterrupt:
            a.err.print("stopped; the day in flight was abandoned and nothing of it written")
            raise typer.Exit(130) from None
    failed = [r for r in results if r.status == DayStatus.FAILED]
    if failed and fail:
        day = failed[-1]
        then = (
            f"the run is now failed; `loopsim run resume {run_ref}` puts it back"
            if day.run_failed
            else f"`loopsim run step {run_ref}` tries the next day"
        )
        raise ModelOutputInvalid(f"day {day.index} failed: {day.error}; {then}")
    return results


@run_app.command("step")
def run_step(
    ctx: typer.Context,
    run_ref: RunArg,
    days: Annotated[int, typer.Option("--days", "-n", min=1, help="Days to run.")] = 1,
) -> None:
    """Run the next N days, each a fresh researcher. Ctrl-C stops at a day boundary.

    Exits 3 when it stops at a check-in (the run then waits for a human), so a script
    can tell that from N days done (exit 0)."""
    a = _app(ctx)
    results = _step(a, run_ref, days)
    if a.opened_checkin is not None:
        a.err.print(
            f"check-in {a.opened_checkin} is open and the run waits for it: "
            f"`loopsim checkin review {a.opened_checkin}`"
        )
        raise typer.Exit(EXIT_AT_CHECKIN)
    elif len(results) < days:
        with a.open_db().read() as session:
            run = Store(session).get_run(run_ref)
            status, reason = run.status, run.status_reason
        if status == RunStatus.COMPLETED:
            a.err.print(f"run is completed: {reason}")


def _set_status(
    ctx: typer.Context, run_ref: str, allowed: set[str], to: RunStatus, reason: str | None
) -> None:
    a = _app(ctx)
    with a.open_db().write() as session:
        store = Store(session)
        run = store.get_run(run_ref, lock=True)
        if run.status not in allowed:
            raise InvalidState(f"run {run.id} is {run.status}; cannot make it {to}")
        store.set_status(run, to, reason)
    a.err.print(f"run {run_ref} is {to}")


@run_app.command("pause")
def run_pause(ctx: typer.Context, run_ref: RunArg) -> None:
    """Pause a run; takes effect at the next day boundary."""
    _set_status(
        ctx, run_ref, {RunStatus.CREATED, RunStatus.RUNNING}, RunStatus.PAUSED, "paused by a human"
    )


@run_app.command("resume")
def run_resume(ctx: typer.Context, run_ref: RunArg) -> None:
    """Resume a paused or failed run."""
    _set_status(ctx, run_ref, {RunStatus.PAUSED, RunStatus.FAILED}, RunStatus.RUNNING, None)


@run_app.command("halt")
def run_halt(ctx: typer.Context, run_ref: RunArg) -> None:
    """Stop a run for good. Its record stays."""
    _set_status(
        ctx,
        run_ref,
        {s for s in RunStatus if s != RunStatus.HALTED},
        RunStatus.HALTED,
        "halted by a human",
    )


# ------------------------------------------------------------------------------- demo


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


@app.command("demo")
def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option("--days", "-n", min=1, help="Days to run.")] = 3,
    spec_path: Annotated[
        Path | None, typer.Option("--spec", help="Run spec; defaults to a built-in one.")
    ] = None,
    report: Annotated[Path, typer.Option(help="Where to write the Markdown report.")] = Path(
        "demo-report.md"
    ),
) -> None:
    """Create the database if needed, start a run, step it, verify and export it."""
    a = _app(ctx)
    if spec_path is None:
        spec = RunSpec.model_validate(
            __import__("tomllib").loads(files("loopsim").joinpath("demo.toml").read_text())
        )
    else:
        spec = load_spec(spec_path)
    dbmod.refuse_database_target(report, a.url, "--report")
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
        results = _step(a, run_id, days - committed, fail=False)
        committed += sum(r.status == DayStatus.COMMITTED for r in results)
        tries += len(results)
        if a.opened_checkin is not None:
            a.err.print(
                f"check-in {a.opened_checkin} opened; the run waits for a human: "
                f"`loopsim checkin review {a.opened_checkin}`"
            )
            break
        if results and results[-1].status == DayStatus.FAILED:
            a.err.print(f"day {results[-1].index} failed ({results[-1].error}); trying again")
            if results[-1].run_failed:
                _set_status(ctx, run_id, {RunStatus.FAILED}, RunStatus.RUNNING, None)
        elif not results:
            break
    with database.read() as session:
        store = Store(session)
        verified = store.verify_chain(run_id)
        write_atomically(report, [to_markdown(store, store.get_run(run_id))])
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


def main() -> None:
    app()


# Commands that live in their own modules register on import.
from loopsim.cli import checkin as _cli_checkin  # noqa: E402, F401
from loopsim.cli import db as _cli_db  # noqa: E402, F401
from loopsim.cli import probe as _cli_probe  # noqa: E402, F401
from loopsim.cli import record as _cli_record  # noqa: E402, F401
from loopsim.cli import serve as _cli_serve  # noqa: E402, F401
