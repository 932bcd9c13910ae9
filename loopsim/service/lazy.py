"""The worker's day loop, built when the worker first plans a day.

:class:`~loopsim.loop.Loop` brings in the chat seam and the researcher, and with them
langchain-core with its tracers and langsmith: about a second of CPU. A worker needs none
of that to claim runs, renew leases or answer ``/healthz``, so it builds its loop when
the first run it claimed is about to plan a day (on a thread of its pool, while the event
loop goes on renewing leases), and ``loopsim serve`` claims its first run without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from loopsim.config import Settings
from loopsim.record.db import Database

if TYPE_CHECKING:
    from loopsim.chat.handle import ChatFactory
    from loopsim.checkin.drift import Similarity
    from loopsim.loop import Loop


class LazyLoop:
    """One :class:`Loop`, built at the first :meth:`get`, by whichever thread asks first.
    ``similarity`` is called then too: an embedder's module imports langchain as well."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        chat_factory: ChatFactory,
        similarity: Callable[[], Similarity],
    ) -> None:
        self._args = (db, settings, chat_factory)
        self._similarity = similarity
        self._loop: Loop | None = None
        self._lock = threading.Lock()

    def get(self) -> Loop:
        with self._lock:
            if self._loop is None:
                from loopsim.loop import Loop

                self._loop = Loop(*self._args, self._similarity())
            return self._loop
