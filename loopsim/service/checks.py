"""The lease checks before model calls, read together for all of a worker's runs.

Every request a run's task sends to a model is first preceded by a check that the run's
lease is still this worker's (:mod:`loopsim.service.events`). At high concurrency the
calls of many runs go out within a few milliseconds of each other, and one read per call
(a thread hop, a transaction and a statement each) cost a worker about a seventh of its
CPU at 64 runs. :class:`LeaseChecks` asks the database once for every check waiting when
the read starts; checks asked while a read is in flight wait for the next one, so every
answer is read after its check was asked, as a check of its own would be.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from loopsim.errors import LoopsimError
from loopsim.record.leases import Lease

Read = Callable[[Sequence[Lease]], Awaitable[dict[str, LoopsimError]]]
"""One read of several leases: the error of each refused one, by run id."""


class LeaseChecks:
    """Batches lease checks; see the module docstring. Lives on one event loop."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._asked: list[tuple[Lease, asyncio.Future[None]]] = []
        self._reader: asyncio.Task[None] | None = None
        self.reads = 0
        """Reads made so far (each one answers every check asked before it began)."""

    async def check(self, lease: Lease) -> None:
        """Return if the lease is live by a read begun after this call; raise the error
        the read found for it otherwise (:class:`~loopsim.errors.LeaseLost`, a missing
        run, or the read's own failure)."""
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asked.append((lease, answer))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._answer_all())
            self._reader.add_done_callback(self._abandoned)
        await answer

    def _abandoned(self, reader: asyncio.Task[None]) -> None:
        """A reader cancelled (even before its first step, when its own ``finally`` never
        runs) leaves no check waiting for an answer nobody will give."""
        if reader is not self._reader:
            return  # a newer reader took over the checks asked since
        if reader.cancelled() or reader.exception() is not None:
            for _, answer in self._asked:
                answer.cancel()
            self._asked = []

    async def _answer_all(self) -> None:
        waiting: list[tuple[Lease, asyncio.Future[None]]] = []
        try:
            while self._asked:
                batch, self._asked = self._asked, []
                waiting = [(lease, answer) for lease, answer in batch if not answer.done()]
                if not waiting:
                    continue
                self.reads += 1
                try:
                    refused = await self._read([lease for lease, _ in waiting])
                except Exception as exc:  # the read failed: every check it answers fails
                    for _, answer in waiting:
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for lease, answer in waiting:
                    if not answer.done():
                        error = refused.get(lease.run_id)
                        if error is None:
                            answer.set_result(None)
                        else:
                            answer.set_exception(error)
        finally:  # cancelled (the worker stops): no check is left waiting on a dead reader
            for _, answer in [*waiting, *self._asked]:
                answer.cancel()
            self._asked = []
