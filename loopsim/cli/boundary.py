"""The CLI's one error boundary, :class:`LoopsimGroup`: a known error is one line on
stderr and its exit code, never a traceback.

It turns every :class:`LoopsimError` into ``error: ...``, Click's usage errors into one
line in loopsim's words (:func:`usage_line`), Ctrl-C into exit 130, and a reader that
stopped reading (``| head -1``) into a quiet exit 0.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import sys
from typing import Any

import typer
from typer._click.exceptions import (
    BadParameter,
    MissingParameter,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)
from typer.core import TyperGroup

from loopsim.cli.context import AppContext
from loopsim.errors import LoopsimError
from loopsim.exports.markdown import safe_text


class LoopsimGroup(TyperGroup):
    """The error boundary: a known error is one line and an exit code, never a traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        # Ctrl-C while the arguments are parsed (just after the CLI's imports, the moment
        # a slow start invites one) would reach Typer, which exits 130 without a word.
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            typer.echo("\ninterrupted", err=True)
            raise typer.Exit(130) from None

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
            return super().parse_args(ctx, args)
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
