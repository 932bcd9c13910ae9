"""How the worker runs its write transactions: off the event loop, watched for
``/healthz``, and waited out when the database stays locked.

- On SQLite, writes run one at a time on a thread of their own. The file has one write
  lock, so writers of one process gain nothing from racing for it, and a writer that
  loses the race sleeps in SQLite's busy handler (up to 100 ms a try) instead of being
  handed the lock. Reads keep the shared pool, so writes blocked by another process
  never starve the reads (the lease check before a model call, the next day's plan).
  On PostgreSQL, writes of different runs lock different rows and share the pool.
- A write that finds the database locked past the busy timeout
  (:class:`~loopsim.errors.DatabaseBusy`) rolled back whole, so it is simply asked
  again, after a short pause, until it goes through or its task is cancelled: a worker
  blocked by a frozen writer fails no run and drops no day; it goes on when the lock
  is free. Only a caller that can do without the write (a release: leases expire on
  their own) asks for no retry. Opening a check-in, whose predictions are model calls,
  runs on a thread of its own (:meth:`Writer.apart`) and is waited out the same way.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from loopsim.errors import DatabaseBusy, DatabaseError
from loopsim.service.health import WriteHealth, reason

log = logging.getLogger("loopsim.service.writes")
T = TypeVar("T")

APART = 4
"""Check-ins opened at once (their predictions are model calls); more wait their turn."""

PAUSE_SECONDS = (0.1, 0.25, 0.5, 1.0)
"""Pauses between attempts of a write the database refused as locked (the last one
repeats). Each attempt has already waited the busy timeout inside SQLite."""


class Writer:
    """Runs write transactions for the worker; see the module docstring."""

    def __init__(self, shared: ThreadPoolExecutor, health: WriteHealth, *, serial: bool) -> None:
        self.health = health
        self._own = serial
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopsim-write")
            if serial
            else shared
        )
        # Bounded, not the event loop's default executor (up to 32 threads on a large
        # machine): each holds a connection while it waits out a locked file, and the
        # connections the worker's threads can hold must leave one for the event loop's
        # own reads of SQLite (loopsim.service.worker.Service._db).
        self._apart = ThreadPoolExecutor(max_workers=APART, thread_name_prefix="loopsim-apart")

    async def __call__(
        self,
        fn: Callable[..., T],
        *args: Any,
        retry: bool = True,
        wrote: Callable[[T], bool] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn`` as a watched write. ``wrote``, if given, says from its result whether
        it wrote at all (a claim that found nothing took no write lock)."""
        call = functools.partial(self._watched, functools.partial(fn, *args, **kwargs), wrote)
        return await self._retried(call, self._pool, getattr(fn, "__name__", "write"), retry)

    async def apart(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn``, which writes but also waits on other things (a check-in's
        predictions are model calls), on a thread of its own rather than the writer's, and
        wait out a locked database the same way: a run whose check-in came due must not
        be let go for a busy database and re-claimed past it."""
        return await self._retried(functools.partial(fn, *args), self._apart, fn.__name__, True)

    async def _retried(
        self, call: Callable[[], T], pool: ThreadPoolExecutor, what: str, retry: bool
    ) -> T:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:  # in the caller's context: the lease guard of a run's task goes along
                context = contextvars.copy_context()
                return await loop.run_in_executor(pool, context.run, call)
            except DatabaseBusy as exc:
                if not retry:
                    raise
                pause = PAUSE_SECONDS[min(attempt, len(PAUSE_SECONDS) - 1)]
                attempt += 1
                log.warning(
                    "%s: %s; writing again in %.2f s",
                    what,
                    reason(exc),
                    pause,
                    extra={"event": "db.busy", "wait_s": pause},
                )
                await asyncio.sleep(pause)

    def _watched(self, call: Callable[[], T], wrote: Callable[[T], bool] | None = None) -> T:
        # In the writing thread, so a write still waiting after its task was cancelled
        # still counts as waiting.
        token = self.health.began()
        try:
            result = call()
        except DatabaseError as exc:
            self.health.ended(token, exc)
            raise
        except BaseException:
            self.health.ended(token)  # the database answered (a lost lease, a conflict)
            raise
        self.health.ended(token, wrote=True if wrote is None else wrote(result))
        return result

    def shutdown(self) -> None:
        """Wait for the writes, not for a check-in's predictions: a model call in flight
        cannot be interrupted, and its thread stops before its next one and writes nothing
        once the lease is released (loopsim.service.openings)."""
        if self._own:
            self._pool.shutdown(wait=True)
        self._apart.shutdown(wait=False, cancel_futures=True)
