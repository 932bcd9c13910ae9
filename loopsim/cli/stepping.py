"""Driving a run by hand, shared by ``run`` and ``demo``: stepping days with a progress
bar and two-stage Ctrl-C, and changing a run's status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from loopsim.cli.context import AppContext
from loopsim.errors import InvalidState, ModelOutputInvalid
from loopsim.record.store import Store
from loopsim.schemas import DayStatus, RunStatus
from loopsim.text import day_failed, plural

if TYPE_CHECKING:
    # The loop imports the chat seam (langchain); only the commands that step import it.
    from rich.progress import Progress, TaskID

    from loopsim.chat.handle import ChatHandle
    from loopsim.researcher.day import DayResult
    from loopsim.schemas import ModelSpec


DAY_STOP = "stopping after this day; Ctrl-C again abandons it (nothing half-written)"
PREDICTIONS_STOP = (
    "stopping once the check-in's predictions are in; Ctrl-C again abandons them "
    "(the days stay committed)"
)


@contextlib.contextmanager
def stop_on_interrupt(
    err: Console, says: Callable[[], str] = lambda: DAY_STOP
) -> Iterator[threading.Event]:
    """First Ctrl-C: finish the day in flight, then stop, saying ``says()``. Second:
    abandon it, once out of any callback from C (:mod:`loopsim.interrupts`)."""
    from loopsim.interrupts import interrupt

    stop = threading.Event()
    stderr = sys.stderr
    try:
        terminal: int | None = os.dup(2)
    except OSError:  # started with stderr closed: nowhere to say it anyway
        terminal = None

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            interrupt(frame)
            return
        stop.set()
        said = says()
        if sys.stderr is stderr:
            err.print(said)
        elif terminal is not None:  # muted while the embedded model loads: said all the same
            os.write(terminal, f"{said}\n".encode())

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
        if terminal is not None:
            os.close(terminal)


def step_days(a: AppContext, run_ref: str, days: int, *, fail: bool = True) -> list[DayResult]:
    """Step up to ``days`` days of a run, one progress line each. A failed day raises
    unless ``fail`` is false; a check-in opened on the way is left in ``a.opened_checkin``."""
    # Imported here, as the loop is: only the commands that step days draw this bar.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    from loopsim.loop import Loop

    database = a.open_db()
    chats = a.chats()
    say: list[Console] = [a.err]

    def factory(model_id: str, spec: ModelSpec, max_tokens: int) -> ChatHandle:
        """The handles say each endpoint retry as it happens: a dead server is seen at
        once, not after minutes of a silent progress bar."""
        handle = chats(model_id, spec, max_tokens)
        handle.on_retry = lambda exc, wait: say[0].print(
            retry_line(model_id, exc, wait), soft_wrap=True, markup=False, highlight=False
        )
        return handle

    predicting = Predicting(
        lambda line: say[0].print(line, soft_wrap=True, markup=False, highlight=False)
    )
    loop = Loop(database, a.settings, factory, a.similarity(), on_predict=predicting)
    # A run that cannot step is refused before any bar is drawn; one already waiting
    # at a check-in is where a step would stop anyway: it is named, as a stop would be.
    waiting = loop.read(lambda store: open_checkin_of(store, run_ref))
    if waiting is not None:
        a.opened_checkin = waiting
        return []
    results: list[DayResult] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    bar: list[ProbeBar] = []  # made with the progress display, read by the Ctrl-C handler

    def says() -> str:  # a day in flight, or a check-in's predictions after one
        return PREDICTIONS_STOP if bar and bar[0].task is not None else DAY_STOP

    with (
        stop_on_interrupt(a.err, says) as stop,
        # Transient: the day lines stay, and no bar is left frozen where the steps ended.
        Progress(*columns, console=a.err, transient=True) as progress,
    ):
        task = progress.add_task("stepping", total=days)
        say[0] = progress.console
        bar.append(ProbeBar(progress))

        def on_predict(done: int, total: int, error: str | None) -> None:
            predicting(done, total, error)
            bar[0](done, total)

        loop.on_predict = on_predict

        def on_day(result: DayResult) -> None:
            results.append(result)
            progress.advance(task)
            progress.console.print(
                f"day {result.index}  {result.external_date}  {result.status}  "
                f"{plural(result.entries, 'entry', 'entries')}  {result.latency_ms / 1000:.1f} s"
            )

        try:
            loop.run_days(run_ref, days, on_day=on_day, should_stop=stop.is_set)
            a.opened_checkin = loop.opened_checkin
            a.stopped = stop.is_set() and len(results) < days
        except KeyboardInterrupt:
            if bar[0].task is not None:  # predicting: the days before are committed
                a.err.print(
                    "stopped; the check-in's predictions were abandoned, the days before "
                    f"stay committed; `loopsim run step {run_ref}` opens the check-in",
                    soft_wrap=True,
                )
            else:
                a.err.print("stopped; the day in flight was abandoned and nothing of it written")
            raise typer.Exit(130) from None
    failed = [r for r in results if r.status == DayStatus.FAILED]
    if failed and fail:
        day = failed[-1]
        then = (
            f"the run is now failed; `loopsim run resume {run_ref}` puts it back"
            if day.run_failed
            # A failed day keeps its index: the next try is the same day, freshly sampled.
            else f"`loopsim run step {run_ref}` tries day {day.index} again"
        )
        raise ModelOutputInvalid(f"{day_failed(day.index, day.error)}; {then}")
    return results


def open_checkin_of(store: Store, run_ref: str) -> int | None:
    """The open check-in the run waits at; None if it does not wait. Any other state that
    cannot step is refused here, with the reason and the command that helps."""
    from loopsim.loop import refuse_unless_steppable

    run = store.get_run(run_ref)
    if run.status == RunStatus.AWAITING_CHECKIN:
        last = store.last_checkin(run.id)
        if last is not None and last.decision is None:
            return last.id
    if run.status != RunStatus.PAUSED:  # a paused one Loop.start may take from serve
        refuse_unless_steppable(run)
    return None


class Predicting:
    """Says what the model does after a day opens a check-in: one line when predictions
    start, then one per probe. Each prediction is a model call (minutes on the embedded
    model), and minutes of silence read as a hang."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.since = time.monotonic()

    def __call__(self, done: int, total: int, error: str | None) -> None:
        now, took = time.monotonic(), time.monotonic() - self.since
        self.since = now
        if total == 0:
            return
        if done == 0:
            # No check-in id yet: it is given when the check-in is written, after these.
            self.say(
                f"predicting answers to {plural(total, 'probe')} for a check-in "
                "(a model call each)..."
            )
        elif error:
            reason = error.strip().splitlines()[0][:120] if error.strip() else "no reason given"
            self.say(f"  probe {done} of {total}: no valid prediction ({reason}); {took:.1f} s")
        else:
            self.say(f"  probe {done} of {total} predicted in {took:.1f} s")


class ProbeBar:
    """A bar of its own while a check-in's predictions run: after the last day the days'
    bar is full and its clock stopped, and minutes of a still bar read as a hang."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def __call__(self, done: int, total: int) -> None:
        if not total:
            return
        if done == 0:
            self.task = self.progress.add_task("predicting", total=total)
        elif self.task is not None:
            self.progress.update(self.task, completed=done)
            if done == total:  # gone once done: the days go on, or the check-in opens
                self.progress.remove_task(self.task)
                self.task = None


def retry_line(model_id: str, exc: BaseException, wait: float) -> str:
    """One line for one endpoint retry: which model, what went wrong, when it tries again."""
    from loopsim.chat.faults import status_of

    status = status_of(exc)
    what = f"HTTP {status}" if status is not None else type(exc).__name__
    detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
    return f"  model {model_id}: {what}{': ' + detail if detail else ''}; retrying in {wait:.1f} s"


def set_status(
    a: AppContext, run_ref: str, allowed: set[str], to: RunStatus, reason: str | None
) -> None:
    """Move a run from one of the ``allowed`` statuses to ``to``, or refuse."""
    with a.open_db().write() as session:
        store = Store(session)
        run = store.get_run(run_ref, lock=True)
        if run.status == to:  # asked twice: done already, nothing to change
            a.err.print(f"run {run.id} is already {to}")
            return
        if run.status not in allowed:
            raise InvalidState(f"run {run.id} is {run.status}; cannot make it {to}")
        store.set_status(run, to, reason)
    a.err.print(f"run {run_ref} is {to}")
