"""Opening a check-in from the worker, and what may stop it part way.

A check-in's predictions are model calls, one a probe (minutes on a slow model), made one
after another on a thread of their own (:meth:`~loopsim.service.writes.Writer.apart`)
before the write that opens it. That thread is not the run's task, and cancelling the task
does not stop it, so it asks for itself:

- before each prediction, and before each request to the model (the lease guard, retries
  included), whether the service is stopping or the run's lease was found lost. If so it
  stops with :class:`~loopsim.errors.Interrupted` (or :class:`~loopsim.errors.LeaseLost`):
  the calls already made are kept with the run's last day, under the lease's fence, and
  nothing else is written; the check-in is tested for again at the run's next claim;
- a model that stays down through every retry of a prediction leaves the run held, not let
  go: it tries again after a pause that doubles from :data:`PAUSES` ``[0]`` to
  :data:`PAUSES` ``[1]`` seconds, so a dead endpoint is not asked from probe 1 again at
  every poll. The heartbeat renews the lease meanwhile; a stop ends the pause at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loopsim.errors import Interrupted, ModelUnavailable
from loopsim.record import leases
from loopsim.record.leases import Lease
from loopsim.service.events import checkin_payload
from loopsim.text import plural

if TYPE_CHECKING:
    from loopsim.service.worker import Service

# The worker's own logger: these lines are the worker's, wherever the code lives.
log = logging.getLogger("loopsim.service.worker")

PAUSES = (5.0, 300.0)
"""Seconds before a check-in whose predictions found the model down is tried again: the
first pause, doubled after each failure in a row up to the second."""


class Openings:
    """Opens the check-ins the runs of one worker come due for: a part of the
    :class:`~loopsim.service.worker.Service`, which it reads and tells directly."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self.active: set[str] = set()  # runs whose check-in is being opened

    def go_on(self, run_id: str) -> None:
        """Raise :class:`Interrupted` if the service is stopping or the run's lease was
        found lost: asked on the predictions' thread, before each prediction and request."""
        if self._service._stopping.is_set():
            raise Interrupted(f"run {run_id}: the service is stopping; no check-in opened")
        if run_id in self._service._lost:
            raise Interrupted(f"run {run_id}: its lease was lost; no check-in opened")

    def guard(self, lease: Lease) -> None:
        """The lease guard on the predictions' thread (:class:`~.events.Guard`): this
        service going on, then the lease read back from the database."""
        self.go_on(lease.run_id)
        leases.check(self._service.db, lease)

    def abandoned(self, runs: list[str]) -> str:
        """What a stop abandons of these runs' tasks: days, and check-ins being opened."""
        opening = sum(1 for run_id in runs if run_id in self.active)
        days = len(runs) - opening
        said = [plural(days, "day")] if days or not opening else []
        return " and ".join([*said, plural(opening, "check-in opening")] if opening else said)

    def _told(self, run_id: str, ctx: dict[str, Any]) -> Callable[[int, int, str | None], None]:
        """The progress callback of one run's predictions (``Loop.on_predict``): a line
        before each prediction, which may take minutes on a slow model."""

        def told(done: int, of: int, error: str | None) -> None:
            if done >= of:
                return
            self.go_on(run_id)  # before each prediction
            last = f" (probe {done} gave no valid prediction: {error})" if error else ""
            log.info(
                "run %s: opening check-in, predicting probe %d of %d%s",
                *(run_id, done + 1, of, last),
                extra={**ctx, "event": "checkin.predicting"},
            )

        return told

    async def open(self, run_id: str, fence: leases.Fence, ctx: dict[str, Any]) -> bool:
        """Open the check-in found due; True if it opened and the run waits."""
        service = self._service
        self.active.add(run_id)
        try:
            opened = await self._attempts(run_id, fence, ctx)
        finally:
            self.active.discard(run_id)
        if opened is None:
            return False
        service.metrics.checkins_opened.inc()
        ctx = {**ctx, "event": "checkin.opened", "checkin_id": opened}
        log.info("run %s waits for check-in %d", run_id, opened, extra=ctx)
        if service.webhook is not None:
            payload = checkin_payload(service.db, opened, run_id, service.worker)
            service._spawn(service.webhook.send(payload))
        service._spawn(service._pending.refresh())
        return True

    async def _attempts(self, run_id: str, fence: leases.Fence, ctx: dict[str, Any]) -> int | None:
        """The opening, on a thread of its own, until it goes through, pausing after each
        one the model's being down failed (see the module docstring)."""
        service = self._service
        opening = functools.partial(
            service._write.apart,
            service.loop.open_due_checkin,
            run_id,
            fence,
            self._told(run_id, ctx),
        )
        failures = 0
        while True:
            try:
                return await opening()
            except ModelUnavailable as exc:
                pause = min(PAUSES[1], PAUSES[0] * 2.0**failures)
                failures += 1
                log.warning(
                    "run %s: check-in predictions failed: %s; trying again in %.0f s",
                    run_id,
                    exc.message,
                    pause,
                    extra={**ctx, "event": "checkin.failed", "error": exc.message, "wait_s": pause},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(service._stopping.wait(), timeout=pause)
            self.go_on(run_id)
