"""The ``loopsim`` command line: the root app.

This module builds the root app, its global options (``--db``, ``--version``) and the
invocation's :class:`AppContext`, and names the commands of each command module in the
order ``--help`` lists them (:data:`COMMANDS`). A command module is imported, and Typer
builds its commands, only when one of them is looked up: a command pays for its own
module and its own group, not for every command's imports and signatures. Each command
module owns its commands (a group owns its Typer app) and takes what they share from
:mod:`loopsim.cli.context`; none imports this package, so the root imports the leaves
and never the reverse (tests/test_layers.py holds it).

One error boundary (:class:`~loopsim.cli.boundary.LoopsimGroup`) turns every
:class:`LoopsimError` into one line on stderr and its exit code. Data goes to stdout;
progress and messages go to stderr, so ``loopsim run create spec.toml`` can be captured
and ``--json`` piped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Annotated, Any

import typer
import typer.main

from loopsim import __version__
from loopsim.cli.boundary import LoopsimGroup
from loopsim.cli.context import AppContext, load_settings

__all__ = ["AppContext", "app", "main"]

# The commands, then the groups, each in the order --help and docs/cli.md list them: name
# -> (module, attribute), a command function or a group's Typer app. A command's module
# is imported, and its Click command built, when the command is looked up: `run list`
# imports and builds the `run` group only (see _Commands).
COMMANDS: dict[str, tuple[str, str]] = {
    "calls": ("loopsim.cli.calls", "calls"),
    "demo": ("loopsim.cli.demo", "demo"),
    "export": ("loopsim.cli.export", "export"),
    "serve": ("loopsim.cli.serve", "serve"),
    "db": ("loopsim.cli.db", "app"),
    "checkin": ("loopsim.cli.checkin", "app"),
    "probe": ("loopsim.cli.probe", "app"),
    "run": ("loopsim.cli.run", "app"),
    "record": ("loopsim.cli.record", "app"),
}

HELP = (
    "Groundhog-day iterated amplification: a memoryless researcher, a hash-chained "
    "record, and human check-ins."
)


def _settings() -> dict[str, Any]:
    """The root app's settings, which its commands and groups inherit."""
    return {
        "add_completion": False,
        "rich_markup_mode": None,
        "pretty_exceptions_enable": False,
    }


def _build(name: str) -> Any:
    """The Click command (or group) ``name``, built as Typer builds it under the root."""
    module, attribute = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(**_settings())
    holder.callback()(lambda: None)  # a group, whatever it holds
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return typer.main.get_command(holder).commands[name]  # type: ignore[attr-defined]


class _Commands(MutableMapping[str, Any]):
    """The root's commands by name, each built at its first lookup. Listing them (the
    help screen, docs/cli.md) builds them all; running one builds that one."""

    def __init__(self, built: MutableMapping[str, Any], make: Callable[[str], Any]) -> None:
        self._built = dict(built)
        self._make = make

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in COMMANDS:
                raise KeyError(name)
            self._built[name] = self._make(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (name for name in self._built if name not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self._built))


class _Root(LoopsimGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands(self.commands, _build)


app = typer.Typer(cls=_Root, no_args_is_help=True, help=HELP, **_settings())


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
