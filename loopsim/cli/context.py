"""What every command shares: the invocation's :class:`AppContext` (settings, the one
database, the chat and similarity seams, the two consoles), how a command finds it, and
the argument types several command groups take.

Command modules import this, never the ``loopsim.cli`` package itself: the root imports
the leaves, not the reverse.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.text import Text

from loopsim.errors import SpecError
from loopsim.exports.markdown import inert_json
from loopsim.record import db as dbmod

if TYPE_CHECKING:
    # The chat seam imports langchain; only the commands that call a model import it.
    from loopsim.chat.handle import ChatFactory, ChatHandle
    from loopsim.checkin import drift
    from loopsim.config import Settings
    from loopsim.schemas import ModelSpec

RunArg = Annotated[
    str, typer.Argument(metavar="RUN", help="Run id, or a unique prefix of it (4+ characters).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
# The largest id, day or sequence number the INTEGER columns of every backend hold; a
# larger one is a usage error rather than a driver's overflow.
ID_MAX = 2**31 - 1


class _Stdout(Console):
    """stdout. A reader that stopped reading (`| head -1`) ends the command quietly with
    exit 0 (rich would exit 1); the boundary in LoopsimGroup.invoke (cli/boundary.py) does
    the rest."""

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
    stopped: bool = False  # a first Ctrl-C stopped step_days before its days were done
    similarity_fn: drift.Similarity | None = None
    _database: dbmod.Database | None = field(default=None, repr=False)
    # No markup or emoji codes: printed paths, names and model text may hold "[/x]" or
    # ":smile:", which must come out as written (a stray closing tag would crash).
    out: Console = field(
        default_factory=lambda: _Stdout(highlight=False, soft_wrap=True, markup=False, emoji=False)
    )
    # Soft-wrapped, as stdout: a long path or command in a message stays one line for the
    # terminal to wrap, not broken by a newline where a copy or a script would trip on it.
    err: Console = field(
        default_factory=lambda: Console(
            stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False
        )
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
            self.url, busy_timeout_ms=self.settings.busy_timeout_ms, chain_key=self.chain_key
        )
        return self._database

    @property
    def chain_key(self) -> bytes | None:
        """LOOPSIM_CHAIN_KEY as bytes, for keyed hash chains; None if unset."""
        key = self.settings.chain_key
        return key.get_secret_value().encode() if key is not None else None

    def close(self) -> None:
        if self._database is not None:
            database, self._database = self._database, None
            database.dispose()

    def chats(self) -> ChatFactory:
        if self.chat_factory:
            return self.chat_factory
        settings = self.settings

        def build(model_id: str, spec: ModelSpec, max_tokens: int) -> ChatHandle:
            # The chat seam imports langchain: at the first model built, so that `serve`
            # claims its first run without it.
            from loopsim.chat.handle import build_chat

            return build_chat(settings)(model_id, spec, max_tokens)

        return build

    def similarity(self) -> drift.Similarity:
        # Imported here: only the commands that score answers need drift.
        from loopsim.checkin import drift

        return self.similarity_fn or drift.from_settings(self.settings)

    def print_json(self, data: Any) -> None:
        """Indented JSON on stdout. Model text in it keeps every character, escaped so
        that no terminal acts on it (rich's print_json would let C1 controls through)."""
        self.out.print(Text(inert_json(data, indent=2)), soft_wrap=True)


def load_settings() -> Settings:
    """Settings from the environment; a bad ``LOOPSIM_*`` value is one line, not a
    traceback."""
    from pydantic import ValidationError

    from loopsim.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "LOOPSIM_" + str(first["loc"][0]).upper() if first["loc"] else "LOOPSIM_*"
        raise SpecError(f"{name}: {first['msg'].lower()}") from None


def app_context(ctx: typer.Context) -> AppContext:
    """The invocation's AppContext, which the root callback put on the root context."""
    obj = ctx.find_root().obj
    assert isinstance(obj, AppContext)
    return obj


def print_unfolded(out: Console, table: RenderableType, width: int) -> None:
    """Print ``table`` on a console at least ``width`` columns wide, then put its width
    back: a table fitted to a terminal is printed as fitted, and into a pipe nothing is
    cut or folded."""
    fitted = out.width
    out.width = max(fitted, width)
    try:
        out.print(table)
    finally:
        out.width = fitted
