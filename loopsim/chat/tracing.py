"""Traces: one named parent run for a day's model calls, in any langchain tracer.

With LangSmith on (``LANGSMITH_TRACING=true``) or any langchain callback handler
registered for the context (``tracing_v2_enabled``, ``collect_runs``, a hook of
``register_configure_hook``), each day is one trace: a chain run named after the run and
the day (``bee-foraging day 3``), with the run's id and name, the day's index, its
external date and the model as metadata and tags, and every model call of the day nested
under it, named by its role (``day``, ``subquestion``, ``critic``, ``digest``, ``probe``).
With nothing listening, no run is started and nothing is sent.

Only what is listed above goes into a trace. The run's secret check-in seed is never
handed to this module, and API keys stay inside the chat model, which langchain
serializes as a reference to the key, never its value.

How a call finds its trace: :func:`traced` wraps a conversation (a generator of model
calls, :mod:`loopsim.researcher.conversation`) and, while the conversation waits on a
call, sets a context variable that :func:`call_config` reads. Context variables follow
the thread and the asyncio task, so two runs stepped at once by ``loopsim serve`` never
see each other's trace. langchain itself is imported only when a trace is started.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")
T = TypeVar("T")


class Trace:
    """One parent run. :meth:`start` opens it if anything listens (else it stays off);
    :meth:`end` and :meth:`fail` close it once."""

    def __init__(
        self,
        name: str,
        *,
        inputs: dict[str, Any],
        metadata: dict[str, Any],
        tags: list[str],
    ) -> None:
        self.name = name
        self.inputs = inputs
        self.metadata = metadata
        self.tags = tags
        self._manager: Any = None  # the run's CallbackManagerForChainRun, once started
        self.ended = False

    @property
    def live(self) -> bool:
        return self._manager is not None and not self.ended

    def start(self) -> bool:
        """Open the run; False if no handler listens (then the trace stays off). A
        tracer that fails to start costs the trace, never the day."""
        try:
            from langchain_core.callbacks import CallbackManager

            manager = CallbackManager.configure(
                inheritable_tags=self.tags, inheritable_metadata=self.metadata
            )
            if not manager.handlers:
                return False
            self._manager = manager.on_chain_start(None, self.inputs, name=self.name)
        except Exception as exc:  # a tracer's own fault: the day goes on untraced
            log.warning("tracing %s failed to start: %s", self.name, type(exc).__name__)
            self._manager = None
            return False
        return True

    def child(self, role: str | None) -> dict[str, Any] | None:
        """The ``config`` for one model call under this trace, or None when it is off."""
        if not self.live:
            return None
        name = role or "model"
        return {
            "callbacks": self._manager.get_child(),
            "run_name": name,
            "tags": [f"role:{name}"],
            "metadata": {"loopsim_role": name},
        }

    def end(self, outputs: dict[str, Any]) -> None:
        if self.live:
            self.ended = True
            self._manager.on_chain_end(outputs)

    def fail(self, error: BaseException | str) -> None:
        if self.live:
            self.ended = True
            exc = error if isinstance(error, BaseException) else RuntimeError(error)
            self._manager.on_chain_error(exc)


_active: contextvars.ContextVar[tuple[Trace, str | None] | None] = contextvars.ContextVar(
    "loopsim_trace", default=None
)


def call_config() -> dict[str, Any] | None:
    """The langchain ``config`` for a model call made now: nested under the trace of
    the conversation waiting on it, or None (the call is traced, if at all, on its own)."""
    active = _active.get()
    if active is None:
        return None
    trace, role = active
    return trace.child(role)


def _reset(token: contextvars.Token[Any]) -> None:
    # ValueError: closed from another context (a generator collected late).
    with contextlib.suppress(ValueError):
        _active.reset(token)


def traced(
    conversation: Generator[E, Any, T],
    trace: Trace | None,
    outputs: Callable[[T], dict[str, Any]] = lambda _: {},
    *,
    own: bool = True,
) -> Generator[E, Any, T]:
    """``conversation``, with each model call it waits on nested under ``trace``. If
    ``own``, the trace is started with the conversation and closed when it ends, with
    ``outputs`` of its result (or its error); otherwise the caller started it and closes
    it (several conversations under one trace)."""
    if trace is None or (own and not trace.start()) or not trace.live:
        return (yield from conversation)
    try:
        effect = next(conversation)
        while True:
            token = _active.set((trace, getattr(effect, "role", None)))
            try:
                sent = yield effect
            except GeneratorExit:
                _reset(token)
                raise
            except BaseException as exc:  # a failed call, thrown into the conversation
                _reset(token)
                effect = conversation.throw(exc)
                continue
            _reset(token)
            effect = conversation.send(sent)
    except StopIteration as done:
        if own:
            trace.end(outputs(done.value))
        return done.value  # type: ignore[no-any-return]
    except GeneratorExit:
        conversation.close()
        if own:
            trace.fail("abandoned before its end")
        raise
    except BaseException as exc:
        if own:
            trace.fail(exc)
        raise


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No trace for the calls made inside: none nested under a conversation's trace, and
    none sent to LangSmith even with ``LANGSMITH_TRACING=true`` (a probe's prediction
    must not be readable before the human's blind answer is stored). Handlers a program
    registers in code itself still see them."""
    token = _active.set(None)
    try:
        try:
            from langsmith.run_helpers import tracing_context
        except ImportError:  # no LangSmith: nothing of it to turn off
            yield
            return
        with tracing_context(enabled=False):
            yield
    finally:
        _reset(token)


def day_trace(
    *, run_id: str, run_name: str, day_index: int, external_date: str, model_id: str
) -> Trace:
    """The trace of one day of a run, named ``RUN-NAME day N``. Names, tags and metadata
    only: nothing secret is passed in."""
    metadata = {
        "loopsim_run_id": run_id,
        "loopsim_run_name": run_name,
        "day_index": day_index,
        "external_date": external_date,
        "model_id": model_id,
    }
    tags = ["loopsim", f"run:{run_id}", f"day:{day_index}", f"date:{external_date}"]
    inputs = {"run_id": run_id, "run_name": run_name, "day": day_index, "date": external_date}
    return Trace(f"{run_name} day {day_index}", inputs=inputs, metadata=metadata, tags=tags)
