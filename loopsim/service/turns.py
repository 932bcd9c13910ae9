"""Whether a run that has had its turn should give its slot to a run that waits for one.

A worker asks at every day boundary of every run past its turn. The answer is the count of
running runs no worker holds (:meth:`loopsim.record.runs.RunQueries.waiting_runs`). One
read serves all of the worker's runs for ``fresh`` seconds (its claim loop's poll
interval: a run given up is claimed no sooner than that), and each slot given up meanwhile
takes one off the count, so one waiting run makes one run yield, not every run that reaches
a day boundary before the next read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class WaitingRuns:
    """The count of waiting runs, read once per ``fresh`` seconds for every task."""

    def __init__(self, read: Callable[[], Awaitable[int]], fresh: float) -> None:
        self._read = read
        self.fresh = fresh
        self._count = 0
        self._until = 0.0
        self._pending: asyncio.Future[None] | None = None

    async def take(self) -> bool:
        """Whether a run waits for a slot. True hands it the caller's slot: the caller
        must then give its run up."""
        now = time.monotonic()
        if self._pending is None or now >= self._until:
            self._until = now + self.fresh
            self._pending = asyncio.ensure_future(self._refresh())
        await asyncio.shield(self._pending)  # a task cancelled here leaves the read to others
        if self._count > 0:
            self._count -= 1
            return True
        return False

    async def _refresh(self) -> None:
        try:
            self._count = await self._read()
        except BaseException:
            self._until = 0.0  # read again at the next ask, not after the window
            raise
