"""The ``loopsim`` command's entry point, for the console script and ``python -m loopsim``.

It imports nothing heavy itself, so that Ctrl-C at any moment, including while the CLI
imports, ends the command with exit code 130 and one short line instead of a
``KeyboardInterrupt`` traceback; and ``loopsim --version`` is answered here, without the
CLI. (Inside a command, the CLI's own boundary
handles Ctrl-C the same way; ``run step`` first finishes the day in flight.)
"""

from __future__ import annotations

# The signal module's C core, built into the interpreter: importing it takes no time, where
# ``import signal`` pulls in enum and functools, long enough for a Ctrl-C to land before
# main() can catch it. Nothing else is imported before main()'s ``try`` but
# loopsim.interrupts, which imports only modules built into the interpreter, and is
# imported here because the unraisable hook below may run while the interpreter shuts
# down, when nothing can be imported any more.
import _signal
import sys

from loopsim import interrupts

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped


def _interrupted() -> None:
    # A second Ctrl-C while the interpreter shuts down kills it outright, without a
    # traceback; the shell still sees 130.
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
    try:
        sys.stderr.write("\ninterrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    sys.exit(INTERRUPTED)


def _flush_or_quit() -> None:
    """Flush stdout now, while a closed pipe can still be told apart from a bug: the
    interpreter's own last flush would print "Exception ignored" and exit 120."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)


def _unraisable(unraisable: object) -> None:
    """``sys.unraisablehook``: a Ctrl-C that lands where Python cannot raise it (in a
    weakref callback of the import machinery, say, on a slow machine) would be printed as
    "Exception ignored" with a traceback and lost. It is sent again a moment later, from
    a thread (sent from here it would land in this hook, as unraisable as the first), to
    land in ordinary code, where main() turns it into exit code 130; anything else is
    reported as usual. While the interpreter shuts down, the command is ending anyway,
    and no thread can start: the Ctrl-C is dropped quietly."""
    if isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
        if not sys.is_finalizing():
            interrupts.again_soon()
        return
    sys.__unraisablehook__(unraisable)  # type: ignore[arg-type]


def main() -> None:
    sys.unraisablehook = _unraisable
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, interrupts.on_sigint)
    try:
        if sys.argv[1:] == ["--version"]:
            # Answered before the CLI and its libraries load, as the CLI's own --version
            # (tests/test_startup.py holds the two to the same line).
            from loopsim import __version__

            sys.stdout.write(f"loopsim {__version__}\n")
            _flush_or_quit()
            return
        from loopsim.cli import main as cli_main

        try:
            cli_main()
        finally:
            _flush_or_quit()
    except KeyboardInterrupt:
        _interrupted()


if __name__ == "__main__":
    main()
