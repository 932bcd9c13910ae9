"""``loopsim run fork``: a new run that starts from another run's record at a day and goes
on with some of the spec changed (:mod:`loopsim.record.forks`, docs/forks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loopsim.cli.context import ID_MAX, RunArg, app_context
from loopsim.errors import SpecError
from loopsim.record.forks import merge_overrides
from loopsim.record.store import Store
from loopsim.schemas import read_toml
from loopsim.text import plural


def run_fork(
    ctx: typer.Context,
    run_ref: RunArg,
    at_day: Annotated[
        int,
        typer.Option(
            "--at-day",
            metavar="N",
            help="The last day of the parent the fork keeps (1 to its last committed day).",
        ),
    ],
    overrides_path: Annotated[
        Path | None,
        typer.Argument(
            metavar="[OVERRIDES]",
            help="TOML with the spec sections to change: conditional, persona, charter, "
            "model, time, checkins, budget.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Name; defaults to the parent's name and the day.")
    ] = None,
) -> None:
    """Fork a run at day N and print the new run's id.

    The fork's record starts as the parent's up to day N, hash for hash (reverted days
    stay reverted), with the check-ins decided by then; from day N+1 it goes on by itself
    under the parent's spec with OVERRIDES merged in. The parent is never changed."""
    from loopsim.chat.handle import check_model_id

    a = app_context(ctx)
    # Checked before the database is touched: bad input writes nothing.
    if not 1 <= at_day <= ID_MAX:
        raise SpecError(f"--at-day {at_day}: give a day of the run, 1 or more")
    overrides = read_toml(overrides_path) if overrides_path is not None else {}
    source = str(overrides_path) if overrides_path is not None else "overrides"
    with a.open_db().write() as session:
        store = Store(session)
        parent = store.get_run(run_ref, lock=True)
        spec = merge_overrides(parent.spec, overrides, source=source)
        model = parent.model
        if "name" in overrides.get("model", {}):
            model = spec.model.name or model
            check_model_id(model, f"{source}: [model] name")
        last = store.last_committed_day(parent.id)
        if at_day > last:
            have = f"its last committed day is {last}" if last else "it has no committed day"
            raise SpecError(f"--at-day {at_day}: run {parent.id} cannot fork there; {have}")
        copy = store.fork_run(
            parent,
            at_day,
            spec,
            name=name or f"{parent.name}@{at_day}"[:200],  # a name given is checked whole
            model=model,
        )
        run_id, parent_id = copy.run.id, parent.id
    a.out.print(run_id)
    a.err.print(
        f"forked run {parent_id} at day {at_day}: "
        f"{plural(copy.days, 'day')}, {plural(copy.entries, 'entry', 'entries')}, "
        f"{plural(copy.checkins, 'check-in')} copied; `loopsim run step {run_id}` goes on",
        soft_wrap=True,
    )
