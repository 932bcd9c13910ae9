"""What ``/healthz`` says about a worker, and whether it can write.

A worker that answers HTTP but cannot write is not healthy. On SQLite one process at a
time holds the write lock; a process frozen (SIGSTOP, a stopped VM, a debugger) between
``BEGIN IMMEDIATE`` and ``COMMIT`` keeps holding it, and every other writer waits until it
is resumed. :class:`WriteHealth` watches every write transaction the worker runs, from
the moment it asks for the lock, and says why writes are blocked:

- a write that has waited ``stall_seconds`` or more and is still waiting:
  ``writes blocked for 12 s: waiting for the database``;
- writes that failed (the busy timeout ran out, the server went away) with no write
  succeeding since: ``writes blocked for 45 s: database is locked``, counted from the
  start of the first failed attempt.

The next write that commits (or that the database refuses for a reason of its own, such as
a lost lease: the database answered) clears it. A worker with nothing to write is healthy.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from loopsim.errors import DatabaseBusy, DatabaseError


def reason(error: DatabaseError) -> str:
    """A short reason for ``/healthz``, without the database's address."""
    if isinstance(error, DatabaseBusy):
        return "database is locked (another process holds its write lock)"
    return error.message


class WriteHealth:
    """Tracks the write transactions in flight and the last one's outcome. Called from
    the threads that run the writes and read from the HTTP thread, hence the lock."""

    def __init__(self, stall_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._waiting: dict[int, float] = {}
        self._failing_since: float | None = None
        self._error = ""

    def began(self) -> int:
        """A write asks for the database; returns a token for :meth:`ended`."""
        with self._lock:
            token = next(self._ids)
            self._waiting[token] = self._clock()
            return token

    def ended(self, token: int, error: DatabaseError | None = None, *, wrote: bool = True) -> None:
        """The write is over: committed or answered (``error`` None), or it could not
        reach the database's write lock or the database at all. A call that ended
        without writing (``wrote`` False: a claim that found nothing to claim reads only)
        says nothing about whether writes get through, so it clears nothing."""
        with self._lock:
            started = self._waiting.pop(token, self._clock())
            if error is None:
                if wrote:
                    self._failing_since = None
            else:
                if self._failing_since is None:
                    self._failing_since = started
                self._error = reason(error)

    def problem(self) -> str | None:
        """Why this worker cannot write now, or None if it can (as far as it knows)."""
        with self._lock:
            now = self._clock()
            if self._failing_since is not None:
                return f"writes blocked for {now - self._failing_since:.0f} s: {self._error}"
            oldest = min(self._waiting.values(), default=None)
            if oldest is not None and now - oldest >= self.stall_seconds:
                return f"writes blocked for {now - oldest:.0f} s: waiting for the database"
            return None


def report(writes: WriteHealth, *, stopping: bool, ready: bool, **fields: Any) -> dict[str, Any]:
    """The body of ``/healthz``: ``status`` is ``ok`` (200), or ``starting``, ``stopping``
    or ``degraded`` (503), the last with a ``reason``."""
    problem = writes.problem()
    status = (
        "stopping" if stopping else "starting" if not ready else "degraded" if problem else "ok"
    )
    body: dict[str, Any] = {"status": status, **fields}
    if problem is not None:
        body["reason"] = problem
    return body
