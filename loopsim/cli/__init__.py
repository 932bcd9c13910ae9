"""The ``loopsim`` command line: the root app.

This module builds the root app, its global options (``--db``, ``--version``) and the
invocation's :class:`AppContext`, and registers the commands of each command module in
the order ``--help`` lists them. Each command module owns its commands (a group owns its
Typer app) and takes what they share from :mod:`loopsim.cli.context`; none imports this
package, so the root imports the leaves and never the reverse (tests/test_layers.py
holds it).

One error boundary (:class:`~loopsim.cli.boundary.LoopsimGroup`) turns every
:class:`LoopsimError` into one line on stderr and its exit code. Data goes to stdout;
progress and messages go to stderr, so ``loopsim run create spec.toml`` can be captured
and ``--json`` piped.
"""

from __future__ import annotations

from typing import Annotated

import typer

from loopsim import __version__
from loopsim.cli import calls, checkin, compare, db, demo, export, probe, record, run, serve
from loopsim.cli.boundary import LoopsimGroup
from loopsim.cli.context import AppContext, load_settings

__all__ = ["AppContext", "app", "main"]

app = typer.Typer(
    cls=LoopsimGroup,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Groundhog-day iterated amplification: a memoryless researcher, a hash-chained "
    "record, and human check-ins.",
)
# Commands first, then groups, each in the order --help and docs/cli.md list them.
app.command("calls")(calls.calls)
app.command("demo")(demo.demo)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.add_typer(db.app, name="db")
app.add_typer(checkin.app, name="checkin")
app.add_typer(probe.app, name="probe")
run.app.command("compare")(compare.run_compare)
app.add_typer(run.app, name="run")
app.add_typer(record.app, name="record")


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
        ctx.obj = AppContext(load_settings())
    if db is not None:
        ctx.obj.db_url = db


def main() -> None:
    app()
