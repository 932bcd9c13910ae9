"""``loopsim run ...``: create, list, show, step and control runs, and queue one for
``loopsim serve`` (``run start``)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from loopsim.cli.compare import run_compare
from loopsim.cli.context import JsonOpt, RunArg, app_context, print_unfolded
from loopsim.cli.fork import run_fork
from loopsim.cli.stepping import set_status, step_days
from loopsim.errors import EXIT_AT_CHECKIN, EXIT_INTERRUPTED, InvalidState
from loopsim.exports.markdown import safe_text
from loopsim.record.leases import driver, live_holder, queue_for_service
from loopsim.record.runs import spec_hash
from loopsim.record.store import RunTally, Store
from loopsim.record.tables import Run
from loopsim.schemas import DayStatus, RunStatus, load_spec
from loopsim.text import plural

app = typer.Typer(no_args_is_help=True, help="Create, list, step, fork and control runs.")


def _run_summary(
    store: Store, run: Run, tally: RunTally | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """What `run list` and `run show` say of a run. `run list` passes every run's tally
    and the database's clock, each read once for all of them."""
    if tally is None:
        tally = store.tallies([run.id]).get(run.id, RunTally())
    now = now or store.db_now()
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "status_reason": run.status_reason,
        "model": run.model,
        "days_committed": tally.committed,
        "days_failed": tally.failed,
        "days_reverted": tally.reverted,
        "next_day": tally.next_day,
        "tokens_in": tally.usage.tokens_in,
        "tokens_out": tally.usage.tokens_out,
        "latency_ms": tally.usage.latency_ms,
        "worker": live_holder(store, run, now),
        "driver": driver(store, run, now),
        "parent": run.parent_run_id,
        "fork_day": run.fork_day,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
    }


@app.command("create")
def run_create(
    ctx: typer.Context,
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Run spec (TOML).")],
    name: Annotated[
        str | None, typer.Option(help="Name; defaults to the spec's file name.")
    ] = None,
) -> None:
    """Create a run from a spec and print its id."""
    from loopsim.chat.handle import check_model_id

    a = app_context(ctx)
    spec = load_spec(spec_path)  # validated before the database is touched
    model = spec.model.name or a.settings.model
    # Checked now, not at the first step: a typo is refused before anything is written.
    # Named as every other spec error is: the file, then the field.
    check_model_id(model, f"{spec_path}: [model] name" if spec.model.name else "LOOPSIM_MODEL")
    database = a.open_db()
    with database.write() as session:
        run = Store(session).create_run(spec, name=name or spec_path.stem[:200], model=model)
        run_id = run.id
    a.out.print(run_id)


app.command("fork")(run_fork)


@app.command("delete")
def run_delete(
    ctx: typer.Context,
    run_ref: RunArg,
    force: Annotated[
        bool, typer.Option("--force", help="Delete it even if it has committed days.")
    ] = False,
) -> None:
    """Delete a run and all of its rows (days, entries, calls, probes, check-ins) in one
    transaction. A run with committed days needs --force; no other run is touched."""
    a = app_context(ctx)
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
        forks = len(store.forks_of(run_id))
        counts = store.delete_run(run_id)
    a.err.print(
        f"deleted run {run_id}: {plural(counts['days'], 'day')}, "
        f"{plural(counts['entries'], 'entry', 'entries')}"
        + (
            f"; {plural(forks, 'fork')} of it "
            + ("keeps its" if forks == 1 else "keep their")
            + " own copy of the prefix"
            if forks
            else ""
        ),
        soft_wrap=True,
    )


@app.command("list")
def run_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List runs, newest last, with their status and what drives each: `run step`, or
    `serve` (with the worker holding it now, if one does). On a terminal each run takes
    one line, long names and models cut short; into a pipe every value is whole."""
    a = app_context(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        tallies, now = store.tallies(), store.db_now()
        rows = [
            _run_summary(store, run, tallies.get(run.id, RunTally()), now)
            for run in store.list_runs()
        ]
    if as_json:
        a.print_json(rows)
        return
    if not rows:
        a.out.print("no runs yet; `loopsim run create SPEC` makes one")
        return
    drivers = any(row["driver"] for row in rows)
    # A fork names its parent by the first 8 characters of its id, and the fork day.
    fork_of = [f"{r['parent'][:8]}@{r['fork_day']}" if r["parent"] else "-" for r in rows]
    forks = any(row["parent"] for row in rows)
    table = Table(box=None, pad_edge=False)
    columns = [
        ("id", [row["id"] for row in rows]),
        ("name", [safe_text(row["name"]) for row in rows]),
        ("status", [row["status"] for row in rows]),
        ("days", [str(row["days_committed"]) for row in rows]),
        ("model", [safe_text(row["model"]) for row in rows]),
        *([("driver", [row["driver"] or "-" for row in rows])] if drivers else []),
        *([("fork of", fork_of)] if forks else []),
    ]
    # In terminal cells, not characters: a CJK character takes two.
    wants = {name: max(cell_len(name), *map(cell_len, cells)) for name, cells in columns}
    widths = dict(wants)
    if a.out.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit():
        # Each run on one line of the terminal (80 columns included): the name gives way
        # first, then the model and the driver (cut with an ellipsis), and last the id,
        # to a 12-character prefix that any command still takes (rather than one that
        # looks whole). Into a pipe, with no COLUMNS set, nothing is cut: every value
        # whole, for grep and awk.
        room = a.out.width - 2 * (len(columns) - 1)
        floors = {"name": 4, "model": 8, "driver": 8}
        widths = fit_widths(room, wants, floors)
        if sum(widths.values()) > room:  # a prefix, not an id that looks whole
            widths = fit_widths(room, {**wants, "id": 12}, floors)
    for name, _cells in columns:
        table.add_column(
            name,
            justify="right" if name == "days" else "left",
            no_wrap=True,
            overflow="crop" if name == "id" else "ellipsis",
            width=widths[name],
        )
    for cells in zip(*(cells for _name, cells in columns), strict=True):
        table.add_row(*(Text(cell) for cell in cells))
    print_unfolded(a.out, table, sum(widths.values()) + 2 * len(columns))  # a pipe: no cut


def fit_widths(room: int, wants: dict[str, int], floors: dict[str, int]) -> dict[str, int]:
    """Column widths within ``room``: the columns of ``floors`` give way in its order,
    each down to its floor, until the whole fits (or every one is at its floor)."""
    widths = dict(wants)
    over = sum(widths.values()) - room
    for name, floor in floors.items():
        if over <= 0:
            break
        cut = min(over, widths.get(name, floor) - floor)
        if cut > 0:
            widths[name] -= cut
            over -= cut
    return widths


@app.command("show")
def run_show(ctx: typer.Context, run_ref: RunArg, as_json: JsonOpt = False) -> None:
    """Show one run: status, persona, time policy, days, tokens and model time."""
    a = app_context(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        info = _run_summary(store, run)
        info["chain_head"] = store.chain_head(run.id)[1]
        info["forks"] = [fork.id for fork in store.forks_of(run.id)]
        spec = dict(run.spec)
    info["spec"] = spec
    info["spec_hash"] = spec_hash(spec)
    if as_json:
        a.print_json(info)
        return
    info["latency"] = f"{info['latency_ms'] / 1000:.1f} s"  # model time, retries included
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
        "latency",
        "worker",
        "created_at",
        "chain_head",
        "spec_hash",
    ):
        if info[key] is not None:
            a.out.print(Text(f"{key:15} {safe_text(str(info[key]))}"))
    if info["parent"] is not None:
        a.out.print(Text(f"{'forked from':15} {info['parent']} at day {info['fork_day']}"))
    if info["forks"]:
        a.out.print(Text(f"{'forks':15} {', '.join(info['forks'])}"))
    a.out.print(Text(f"{'persona':15} {safe_text(spec['persona']['name'])}"))
    a.out.print(Text(f"{'time':15} {json.dumps(spec['time'])}"))


@app.command("step")
def run_step(
    ctx: typer.Context,
    run_ref: RunArg,
    days: Annotated[int, typer.Option("--days", "-n", min=1, help="Days to run.")] = 1,
) -> None:
    """Run the next N days, each a fresh researcher. Ctrl-C stops at a day boundary.

    Exits 3 when it stops at a check-in, or finds the run already waiting at one (the
    run waits for a human), so a script can tell that from N days done (exit 0), and
    130 when a Ctrl-C stopped it before N days were done."""
    a = app_context(ctx)
    results = step_days(a, run_ref, days)
    if a.opened_checkin is not None:
        with a.open_db().read() as session:  # why it opened: a schedule, or an alarm
            why = Store(session).get_checkin(a.opened_checkin).reason
        a.err.print(
            f"check-in {a.opened_checkin} is open ({why}) and the run waits for it: "
            f"`loopsim checkin review {a.opened_checkin}`",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_AT_CHECKIN)
    elif a.stopped:  # a script must not take this for the days it asked for
        a.err.print(
            f"stopped by Ctrl-C after {len(results)} of {plural(days, 'day')}; "
            f"`loopsim run step {run_ref}` goes on"
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    else:  # all days done, or fewer: the budget may be spent either way
        with a.open_db().read() as session:
            run = Store(session).get_run(run_ref)
            status, reason = run.status, run.status_reason
        if status == RunStatus.COMPLETED:
            a.err.print(f"run is completed: {reason}")


@app.command("pause")
def run_pause(ctx: typer.Context, run_ref: RunArg) -> None:
    """Pause a run; takes effect at the next day boundary."""
    set_status(
        app_context(ctx),
        run_ref,
        {RunStatus.CREATED, RunStatus.RUNNING},
        RunStatus.PAUSED,
        "paused by a human",
    )


@app.command("resume")
def run_resume(ctx: typer.Context, run_ref: RunArg) -> None:
    """Resume a paused or failed run.

    Its failed-day streak starts afresh: only failed days from here count toward
    failing it again (LOOPSIM_MAX_FAILED_DAYS in a row)."""
    set_status(
        app_context(ctx), run_ref, {RunStatus.PAUSED, RunStatus.FAILED}, RunStatus.RUNNING, None
    )


@app.command("halt")
def run_halt(ctx: typer.Context, run_ref: RunArg) -> None:
    """Stop a run for good. Its record stays."""
    set_status(
        app_context(ctx),
        run_ref,
        {s for s in RunStatus if s not in (RunStatus.HALTED, RunStatus.COMPLETED)},
        RunStatus.HALTED,
        "halted by a human",
    )


@app.command("start")
def run_start(ctx: typer.Context, run_ref: RunArg) -> None:
    """Queue a run for `loopsim serve`: a created run, or one `run step` drives.

    Only runs queued here are claimed by `serve`; `run step` takes a run back."""
    a = app_context(ctx)
    run_id, status = queue_for_service(a.open_db(), run_ref)
    a.err.print(f"run {run_id} is {status}; `loopsim serve` steps it")


# Registered last, so that `run --help` lists it after the commands above.
app.command("compare")(run_compare)
