"""The Python API: one object over one database, for notebooks and scripts.

:func:`open` returns a :class:`Loopsim` that creates, steps, forks, compares and exports
runs and decides check-ins, by wrapping what the command line uses (:class:`~loopsim.loop.Loop`,
:func:`~loopsim.checkin.decision.decide`, the exports, :mod:`loopsim.record.forks`). Every
method opens and commits its own transaction; errors are :class:`~loopsim.errors.LoopsimError`
subclasses with the same one-line messages the CLI prints. docs/python-api.md says which
parts are stable.

Heavy seams (langchain, the chat providers, jinja2) are imported by the methods that need
them, so ``import loopsim`` stays quick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from loopsim.errors import SpecError

if TYPE_CHECKING:
    from loopsim.chat.handle import ChatFactory
    from loopsim.checkin.answers import Answers
    from loopsim.checkin.decision import Outcome
    from loopsim.checkin.drift import Similarity
    from loopsim.config import Settings
    from loopsim.exports.compare import Comparison
    from loopsim.record.db import Database
    from loopsim.record.tables import CheckIn, Run
    from loopsim.researcher.day import DayResult
    from loopsim.schemas import RunSpec

ExportFormat = Literal["md", "jsonl", "html"]


@dataclass(frozen=True)
class RunInfo:
    """A run as :meth:`Loopsim.runs` lists it."""

    id: str
    name: str
    status: str
    model: str
    parent_run_id: str | None
    fork_day: int | None
    last_day: int


@dataclass(frozen=True)
class CheckinInfo:
    """A check-in as :meth:`Loopsim.checkins` lists it."""

    id: int
    run_id: str
    reason: str
    first_day: int
    last_day: int
    decision: str | None
    drift_score: float | None
    trend: float | None


def open(
    url: str | None = None,
    *,
    settings: Settings | None = None,
    chat_factory: ChatFactory | None = None,
    similarity: Similarity | None = None,
) -> Loopsim:
    """Open a loopsim database (a SQLite path or a SQLAlchemy URL; default: the
    ``LOOPSIM_DATABASE_URL`` setting) at the current schema. ``chat_factory`` replaces the
    model seam (``loopsim.testing.scripted_factory`` in tests); ``similarity`` the drift
    similarity (default: ``LOOPSIM_EMBEDDINGS``, see docs/drift.md)."""
    return Loopsim(url, settings=settings, chat_factory=chat_factory, similarity=similarity)


class Loopsim:
    """One database, its settings and its seams. Use it as a context manager, or call
    :meth:`close`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        chat_factory: ChatFactory | None = None,
        similarity: Similarity | None = None,
    ) -> None:
        from loopsim.config import Settings
        from loopsim.record.db import Database

        self.settings = settings if settings is not None else Settings()
        if url is not None:
            self.settings = self.settings.model_copy(update={"database_url": url})
        key = self.settings.chain_key
        self.db: Database = Database.open(
            self.settings.database_url,
            busy_timeout_ms=self.settings.busy_timeout_ms,
            chain_key=key.get_secret_value().encode() if key is not None else None,
        )
        self._chat_factory = chat_factory
        self._similarity = similarity

    # ------------------------------------------------------------------ seams

    def similarity(self) -> Similarity:
        if self._similarity is None:
            from loopsim.checkin import drift

            self._similarity = drift.from_settings(self.settings)
        return self._similarity

    def _chats(self) -> ChatFactory:
        if self._chat_factory is None:
            from loopsim.chat.handle import build_chat

            self._chat_factory = build_chat(self.settings)
        return self._chat_factory

    # ------------------------------------------------------------------ runs

    def create_run(
        self, spec: RunSpec | Mapping[str, Any] | str | Path, *, name: str, model: str | None = None
    ) -> str:
        """Create a run from a spec (a :class:`RunSpec`, a dict as the TOML would parse, or
        a TOML file's path) and return its id. ``model`` defaults to the spec's ``[model]
        name``, then the ``LOOPSIM_MODEL`` setting; it is checked as ``run create`` checks
        it unless a ``chat_factory`` was given."""
        from loopsim.chat.handle import check_model_id
        from loopsim.record.store import Store
        from loopsim.schemas import RunSpec, load_spec, parse_spec

        if isinstance(spec, str | Path):
            parsed = load_spec(Path(spec))
        elif isinstance(spec, RunSpec):
            parsed = spec
        else:
            parsed = parse_spec(dict(spec))
        model_id = model or parsed.model.name or self.settings.model
        if self._chat_factory is None:  # an injected factory knows its own model ids
            check_model_id(model_id, "model")
        with self.db.write() as session:
            return Store(session).create_run(parsed, name=name, model=model_id).id

    def runs(self) -> list[RunInfo]:
        """Every run, oldest first."""
        from loopsim.record.store import Store

        with self.db.read() as session:
            store = Store(session)
            return [_run_info(store, run) for run in store.list_runs()]

    def run(self, ref: str) -> RunInfo:
        """One run, by id or a unique prefix of it."""
        from loopsim.record.store import Store

        with self.db.read() as session:
            store = Store(session)
            return _run_info(store, store.get_run(ref))

    def step(self, run: str, days: int = 1) -> list[DayResult]:
        """Step up to ``days`` days, as ``loopsim run step`` does: it stops early at a
        failed day, a spent budget or a check-in coming due (see :meth:`checkins`).

        A Ctrl-C raises KeyboardInterrupt, and a day cut short writes nothing. On the
        embedded model one landing inside its sampler (a callback from C, where Python
        would drop it) is sent again once the callback returns, if the caller left
        SIGINT to Python's own handler (:mod:`loopsim.interrupts`)."""
        from loopsim.interrupts import deferred
        from loopsim.loop import Loop

        if days < 1:
            raise SpecError(f"days={days}: step at least one day")
        loop = Loop(self.db, self.settings, self._chats(), self.similarity())
        with deferred():
            return loop.run_days(run, days)

    def fork(
        self,
        run: str,
        at_day: int,
        overrides: Mapping[str, Any] | str | Path | None = None,
        *,
        name: str | None = None,
    ) -> str:
        """Fork ``run`` at ``at_day`` with spec ``overrides`` (a dict of the sections
        ``conditional``, ``persona``, ``charter``, ``model``, ``time``, ``checkins``,
        ``budget``, or a TOML file's path) and return the fork's id (docs/forks.md)."""
        from loopsim.chat.handle import check_model_id
        from loopsim.record.forks import merge_overrides
        from loopsim.record.store import Store
        from loopsim.schemas import read_toml

        if isinstance(overrides, str | Path):
            source, changes = str(overrides), read_toml(Path(overrides))
        else:
            source, changes = "overrides", dict(overrides or {})
        with self.db.write() as session:
            store = Store(session)
            parent = store.get_run(run, lock=True)
            spec = merge_overrides(parent.spec, changes, source=source)
            model = parent.model
            if "name" in (changes.get("model") or {}):
                model = spec.model.name or model
                if self._chat_factory is None:
                    check_model_id(model, f"{source}: [model] name")
            copy = store.fork_run(
                parent, at_day, spec, name=(name or f"{parent.name}@{at_day}")[:200], model=model
            )
            return copy.run.id

    def compare(self, a: str, b: str) -> Comparison:
        """Runs ``a`` and ``b`` side by side from their common prefix, with the
        divergence of their records per day (:mod:`loopsim.exports.compare`)."""
        from loopsim.exports.compare import compare
        from loopsim.record.store import Store

        similarity = self.similarity()
        with self.db.read() as session:
            store = Store(session)
            return compare(store, store.get_run(a), store.get_run(b), similarity)

    # ------------------------------------------------------------------ check-ins

    def checkins(self, run: str | None = None, *, pending: bool = False) -> list[CheckinInfo]:
        """The check-ins of a run (or of every run), oldest first."""
        from loopsim.record.store import Store

        with self.db.read() as session:
            store = Store(session)
            run_id = store.get_run(run).id if run is not None else None
            return [_checkin_info(c) for c in store.list_checkins(run_id, pending=pending)]

    def decide(
        self,
        checkin_id: int,
        decision: str,
        *,
        note: str | None = None,
        answers: Answers | None = None,
        skip_probes: bool = False,
    ) -> Outcome:
        """Decide a check-in once: ``approve``, ``amend`` (with ``note``), ``reject`` or
        ``halt``. ``answers`` maps a probe id to ``{"answer": ..., "rating": 1-5}``; they
        are stored blind before any prediction is read, and checked as `checkin decide`
        checks an answers file. Approve and amend are refused while a probe has no answer,
        unless ``skip_probes`` (`--skip-probes`)."""
        from loopsim.checkin.decision import decide
        from loopsim.schemas import Decision

        try:
            chosen = Decision(decision)
        except ValueError:
            choices = ", ".join(d.value for d in Decision)
            raise SpecError(f"decision {decision!r}: give one of {choices}") from None
        return decide(
            self.db,
            checkin_id,
            chosen,
            note=note,
            answers=answers,
            similarity=self.similarity(),
            require_answers=not skip_probes,
        )

    # ------------------------------------------------------------------ exports

    def export(
        self,
        run: str,
        format: ExportFormat = "md",
        *,
        include_reverted: bool = False,
        compare_parent: bool = False,
    ) -> str:
        """The run's record as Markdown, JSONL or a self-contained HTML report, as
        ``loopsim export`` writes it. ``compare_parent`` adds a fork's comparison with its
        parent to the HTML report."""
        from loopsim.exports.markdown import to_jsonl, to_markdown
        from loopsim.record.store import Store

        if format not in ("md", "jsonl", "html"):
            raise SpecError(f"format {format!r}: give md, jsonl or html")
        if compare_parent and format != "html":
            raise SpecError("compare_parent: only for the html format")
        similarity = self.similarity() if compare_parent else None
        with self.db.read(snapshot=True) as session:
            store = Store(session)
            found = store.get_run(run)
            if format == "md":
                return to_markdown(store, found, include_reverted=include_reverted)
            if format == "jsonl":
                lines = to_jsonl(store, found, include_reverted=include_reverted)
                return "".join(line + "\n" for line in lines)
            from loopsim.exports.compare import parent_comparison
            from loopsim.exports.report import to_html

            comparison = None
            if similarity is not None:
                comparison = parent_comparison(store, found, similarity)
            return to_html(store, found, include_reverted=include_reverted, comparison=comparison)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the database's connections. The object is unusable afterwards."""
        self.db.dispose()

    def __enter__(self) -> Loopsim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _run_info(store: Any, run: Run) -> RunInfo:
    return RunInfo(
        run.id,
        run.name,
        run.status,
        run.model,
        run.parent_run_id,
        run.fork_day,
        store.last_committed_day(run.id),
    )


def _checkin_info(c: CheckIn) -> CheckinInfo:
    return CheckinInfo(
        c.id,
        c.run_id,
        c.reason,
        c.first_day_index,
        c.last_day_index,
        c.decision,
        c.drift_score,
        c.trend,
    )
