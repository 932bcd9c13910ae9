"""Asking the human at the terminal: one line at a time, where Ctrl-C and Ctrl-D end the
interactive review cleanly (:class:`Interrupted`) and what is stored stays stored."""

from __future__ import annotations

import typer


class Interrupted(Exception):
    """Ctrl-C or end of input during a review: what is stored stays stored."""

    def __init__(self, code: int) -> None:
        self.code = code


def ask_line(question: str) -> str:
    """One line from the human. Ctrl-C and Ctrl-D stop the review, cleanly."""
    try:
        return input(f"{question}: ").strip()
    except EOFError:
        typer.echo("", err=True)
        raise Interrupted(1) from None
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise Interrupted(130) from None


def ask_text(question: str) -> str:
    while True:
        reply = ask_line(question)
        if reply:
            return reply
        typer.echo("please type something (Ctrl-D stops; the review can be resumed)", err=True)


def ask(question: str, choices: list[str]) -> str:
    """Prompt until the reply is one of ``choices``."""
    while True:
        reply = ask_line(question).lower()
        if reply in choices:
            return reply
        typer.echo(f"please answer one of: {', '.join(c for c in choices if c)}", err=True)
