"""What the worker tells about its work and asks before each request to a model: the
metrics and log lines of each day and each model retry, the webhook payload of a
check-in it opened, the run it marks failed, and the lease guard.

The guard: every request a run's task sends to a model, endpoint retries included,
first checks that the run's lease is still this worker's (:data:`GUARD`, set by the
task). A worker frozen during a call wakes to find the call timed out; the retry that
would follow is the one request a check before each *call* would miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from loopsim.errors import LoopsimError
from loopsim.record.db import Database
from loopsim.record.leases import Fence
from loopsim.record.store import Store
from loopsim.schemas import DayStatus, RunStatus
from loopsim.service.metrics import Metrics

if TYPE_CHECKING:  # the chat seam imports langchain, at the first day a worker plans
    from loopsim.chat.handle import ChatFactory, ChatHandle

# The worker's own logger: these lines are the worker's, wherever the code lives.
log = logging.getLogger("loopsim.service.worker")


@dataclass(frozen=True)
class Guard:
    """Raise :class:`~loopsim.errors.LeaseLost` unless the run's lease is still held:
    ``check`` on the event loop, ``check_sync`` on a thread (check-in predictions)."""

    check: Callable[[], Awaitable[None]]
    check_sync: Callable[[], None]
    run_id: str = ""  # names the run on lines logged for its task (a retry's)


GUARD: ContextVar[Guard | None] = ContextVar("loopsim_lease_guard", default=None)
"""The guard of the run the current task steps; None outside a run's task."""


class _Guarded:
    """A chat model whose every request is preceded by the current task's guard."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def invoke(self, *args: Any, **kwargs: Any) -> Any:
        guard = GUARD.get()
        if guard is not None:
            guard.check_sync()
        return self._model.invoke(*args, **kwargs)

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
        guard = GUARD.get()
        if guard is not None:
            await guard.check()
        return await self._model.ainvoke(*args, **kwargs)


def counted(factory: ChatFactory, metrics: Metrics) -> ChatFactory:
    """The factory, with every model retry counted and logged, and every request guarded."""

    def build(model_id: str, spec: Any, max_tokens: int) -> ChatHandle:
        handle = factory(model_id, spec, max_tokens)
        handle.model = cast(Any, _Guarded(handle.model))

        def on_retry(exc: BaseException, wait: float) -> None:
            # One handle serves every run on this model: the task's guard says whose call.
            guard = GUARD.get()
            run_id = guard.run_id if guard is not None else ""
            metrics.retries.inc()
            log.info(
                "%smodel %s: %s; retrying in %.1f s",
                f"run {run_id}: " if run_id else "",
                model_id,
                type(exc).__name__,
                wait,
                extra={
                    "event": "model.retry",
                    "model": model_id,
                    "wait_s": round(wait, 2),
                    **({"run_id": run_id} if run_id else {}),
                },
            )

        handle.on_retry = on_retry
        return handle

    return build


def account(
    metrics: Metrics, result: Any, seconds: float, ctx: dict[str, Any], calls: Sequence[Any] = ()
) -> None:
    """Count a day written (committed or failed) and its model ``calls`` (each with a
    ``role`` and whether it was ``accepted``), and log it."""
    metrics.days.labels(status=result.status).inc()
    metrics.day_seconds.observe(seconds)
    metrics.tokens.labels(direction="in").inc(result.tokens_in)
    metrics.tokens.labels(direction="out").inc(result.tokens_out)
    for call in calls:
        outcome = "accepted" if call.accepted else "rejected"
        metrics.calls.labels(role=call.role, outcome=outcome).inc()
    extra = {
        **ctx,
        "event": f"day.{result.status}",
        "day": result.index,
        "latency_ms": result.latency_ms,
        "entries": result.entries,
    }
    if result.status == DayStatus.COMMITTED:
        log.info("run %s day %d committed", ctx["run_id"], result.index, extra=extra)
    else:
        log.warning(
            "run %s day %d failed: %s",
            ctx["run_id"],
            result.index,
            result.error,
            extra={**extra, "error": result.error},
        )


def checkin_payload(db: Database, checkin_id: int, run_id: str, worker: str) -> dict[str, Any]:
    """The webhook's body for a check-in this worker opened."""
    with db.read() as session:
        store = Store(session)
        checkin = store.get_checkin(checkin_id)
        run = store.get_run(run_id)
        return {
            "event": "checkin.opened",
            "checkin_id": checkin.id,
            "run_id": run.id,
            "run_name": run.name,
            "reason": checkin.reason,
            "first_day": checkin.first_day_index,
            "last_day": checkin.last_day_index,
            "opened_at": checkin.opened_at.isoformat(),
            "worker": worker,
            "review": f"loopsim checkin review {checkin.id}",
        }


def pending_checkins(db: Database) -> int:
    """Check-ins of every run waiting for a human: the pending gauge's value."""
    with db.read() as session:
        return Store(session).pending_checkins()


class PendingCount:
    """The pending check-ins gauge, read again when it may have changed. Best effort: a
    read that fails leaves the last value (it is a metric, never a reason to stop), and
    of reads that overlap (PostgreSQL's run on a pool) the one started last is shown."""

    def __init__(self, gauge: Any, read: Callable[[], Awaitable[int]]) -> None:
        self.gauge, self.read = gauge, read
        self.asked = self.shown = 0

    async def refresh(self) -> None:
        self.asked += 1
        ticket = self.asked
        try:
            value = await self.read()
        except Exception as exc:  # a metric's read: logged, never raised
            why = exc.message if isinstance(exc, LoopsimError) else repr(exc)
            log.warning("counting check-ins failed: %s", why, extra={"event": "db.error"})
            return
        if ticket > self.shown:
            self.shown = ticket
            self.gauge.set(value)


def fail_run(db: Database, metrics: Metrics, run_id: str, fence: Fence, reason: str) -> None:
    """Mark a run failed whose model cannot even be built: a person must look."""
    with db.write() as session:
        store = Store(session)
        run = store.get_run(run_id, lock=True)
        fence(store, run)
        store.set_status(run, RunStatus.FAILED, reason[:1000])
    metrics.runs_failed.inc()
    log.error("run %s failed: %s", run_id, reason, extra={"event": "run.failed", "run_id": run_id})


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None], install: bool = True) -> Iterator[None]:
    """Call ``stop`` on SIGTERM or SIGINT while the block runs on this event loop."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if install else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
