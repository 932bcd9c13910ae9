"""``loopsim serve``: a long-running worker that steps many runs, day by day.

One asyncio event loop supervises up to ``concurrency`` runs at once:

- it **claims** runs in ``running`` state that ``run start`` queued (never one ``run step``
  drives) through leases (:mod:`loopsim.record.leases`), polling every ``poll_seconds``, so a
  run resumed or a check-in decided from the CLI is picked up within about that long;
- each claimed run gets a task that steps days until the run stops being steppable
  (paused, awaiting a check-in, halted, failed, completed), its lease is lost, or the
  service stops; status changes made by a human take effect at the next day boundary;
- after each day, and first after a claim (its last holder may have died before asking),
  the task asks whether a check-in is due, and if one is, opens it and lets the run go;
- a run held for ``yield_after_days`` days **yields** its slot at the next day boundary
  if other runs are waiting for one, and a claim takes the run that waited longest
  first, so runs beyond ``concurrency`` take turns instead of starving;
- before each model call of a day, the task checks its lease against the database (owner,
  generation, expiry by the database's clock; one read for the calls going out together,
  :mod:`loopsim.service.checks`): a run taken over while this worker was frozen costs no
  further call, and the day is dropped unwritten;
- a **heartbeat** renews every held lease each ``lease_seconds / 3``; a lease found lost
  (taken over or released) cancels its task, and the fence refuses anything that task
  still tries to write. A lease that only expired, because this worker could not renew it
  in time (it was frozen, or another process held SQLite's write lock), is renewed when it
  can be, as nobody claimed it meanwhile, and the run goes on;
- model calls run on the event loop (``ainvoke``), and so do reads of SQLite (a read in
  WAL mode waits for no lock); PostgreSQL's reads run on a small thread pool of its own,
  so a slow model or a slow network never starves the heartbeat; writes go through
  :class:`~loopsim.service.writes.Writer` (one at a time on SQLite, asked again while
  the database stays locked), and ``/healthz`` says ``degraded`` while they are blocked
  (:mod:`loopsim.service.health`).

Shutdown (SIGTERM or SIGINT): stop claiming, give the days in flight ``grace_seconds`` to
commit, cancel the rest (a day is one transaction, and the fence refuses a write after
its lease is released), release every lease, exit 0. A second signal skips the grace.
A check-in's predictions stop before their next model call (:mod:`.openings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from loopsim.chat import transport
from loopsim.checkin import drift
from loopsim.config import Settings
from loopsim.errors import (
    ConcurrentWrite,
    Interrupted,
    InvalidState,
    LeaseLost,
    LoopsimError,
    ModelUnavailable,
)
from loopsim.record import leases, planner_stats
from loopsim.record.db import Database
from loopsim.record.leases import Lease
from loopsim.record.store import Store
from loopsim.record.tables import utcnow
from loopsim.schemas import DayStatus
from loopsim.service import events
from loopsim.service.checks import LeaseChecks
from loopsim.service.config import ServiceConfig, default_worker_id
from loopsim.service.eventloop import loop_kind
from loopsim.service.events import GUARD, Guard, account, counted, fail_run
from loopsim.service.health import WriteHealth, report
from loopsim.service.http import HttpEndpoint
from loopsim.service.lazy import LazyLoop
from loopsim.service.logs import configure_logging
from loopsim.service.metrics import Metrics
from loopsim.service.openings import Openings
from loopsim.service.turns import WaitingRuns
from loopsim.service.writes import Writer

if TYPE_CHECKING:
    # The chat seam and the day loop import langchain: at the first day planned (lazy.py).
    from loopsim.chat.handle import ChatFactory, ChatHandle, Reply
    from loopsim.loop import Loop
    from loopsim.researcher.conversation import Call
    from loopsim.service.webhook import Webhook

# ``loopsim serve`` imports configure_logging from here.
__all__ = ["Service", "ServiceConfig", "configure_logging", "default_worker_id"]

log = logging.getLogger("loopsim.service.worker")
T = TypeVar("T")


class Service:
    """Claims runs and steps them until told to stop."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        chat_factory: ChatFactory,
        config: ServiceConfig | None = None,
        *,
        similarity: drift.Similarity = drift.lexical_similarity,
        similarity_from: Callable[[], drift.Similarity] | None = None,
    ) -> None:
        # similarity_from builds the similarity with the loop (service/lazy.py).
        self.db = db
        self.settings = settings
        self.config = config or ServiceConfig()
        self.metrics = Metrics()
        chats = counted(chat_factory, self.metrics)
        self._loop = LazyLoop(db, settings, chats, similarity_from or (lambda: similarity))
        self.stats = planner_stats.StatisticsKeeper(db)
        self.webhook: Webhook | None = None
        if settings.webhook_url:
            from loopsim.service.webhook import Webhook  # httpx, only when there is one

            self.webhook = Webhook(settings.webhook_url, self.metrics)
        self.held: dict[str, Lease] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._lost: set[str] = set()
        self._deadline: dict[str, float] = {}
        self._turns = WaitingRuns(
            lambda: self._db(self._waiting, list(self._tasks)), self.config.poll_seconds
        )
        self._checks = LeaseChecks(lambda batch: self._db(leases.check_many, db, batch))
        pending = self.metrics.checkins_pending
        self._pending = events.PendingCount(pending, lambda: self._db(events.pending_checkins, db))
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self._abandon = asyncio.Event()
        self._started = time.monotonic()
        self._ready = False
        self.http: HttpEndpoint | None = None
        self._db_pool = ThreadPoolExecutor(
            max_workers=max(2, min(8, self.config.concurrency + 1)),
            thread_name_prefix="loopsim-db",
        )
        stall = max(1.0, self.config.lease_seconds / 3)
        self._write = Writer(self._db_pool, WriteHealth(stall), serial=db.dialect == "sqlite")
        self._inline_reads = db.dialect == "sqlite"
        self._openings = Openings(self)

    @property
    def worker(self) -> str:
        return self.config.worker_id

    @property
    def loop(self) -> Loop:
        """The loop that plans and commits days, built at first use (service/lazy.py)."""
        return self._loop.get()

    # ------------------------------------------------------------------ plumbing

    async def _db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read. SQLite's run on the event loop: in WAL mode a read does not wait for the
        write lock (only for a recovery after a crash, or on a file not in WAL mode), and
        a hop to a thread cost more than most reads (the GIL changed hands at every
        statement). PostgreSQL's wait on the network, so they go to the pool."""
        if self._inline_reads:
            return fn(*args, **kwargs)
        return await self._pooled(fn, *args, **kwargs)

    async def _pooled(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, functools.partial(fn, *args, **kwargs))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def health(self) -> dict[str, Any]:
        return report(
            self._write.health,
            stopping=self._stopping.is_set(),
            ready=self._ready,
            worker=self.config.worker_id,
            leases=len(self.held),
            concurrency=self.config.concurrency,
            uptime_s=round(time.monotonic() - self._started, 1),
        )

    def request_stop(self) -> None:
        """First call: stop claiming and let days in flight finish. Second: abandon them."""
        if self._stopping.is_set():
            self._abandon.set()
            log.info("second stop request: abandoning days in flight", extra={"event": "stop"})
            return
        self._stopping.set()
        what = "stopping: no new claims; days in flight get %.0f s"
        log.info(what, self.config.grace_seconds, extra={"event": "stop"})

    # --------------------------------------------------------------------- serve

    async def serve(self, *, install_signals: bool = True) -> None:
        """Run until :meth:`request_stop` (or SIGTERM/SIGINT)."""
        with events.stop_on_signals(self.request_stop, install_signals):
            await self._pending.refresh()  # right from the first scrape
            if self.config.http_port is not None:
                self.http = HttpEndpoint(self, self.config.http_host, self.config.http_port)
                self.http.start()
                log.info(
                    "metrics and health on %s",
                    self.http.address,
                    extra={"event": "http.listening", "address": self.http.address},
                )
            heartbeat = asyncio.ensure_future(self._heartbeat())
            kind = loop_kind(asyncio.get_running_loop())
            log.info(
                "worker %s serving %s with concurrency %d on %s",
                *(self.config.worker_id, self.db.where, self.config.concurrency, kind),
                extra={"event": "serve.start", "worker": self.config.worker_id, "loop": kind},
            )
            self._ready = True
            # Model calls through aiohttp, its connections closed after the last day.
            async with transport.scope():
                try:
                    await self._supervise()
                finally:
                    await self._shutdown(heartbeat)

    async def _supervise(self) -> None:
        ttl = dt.timedelta(seconds=self.config.lease_seconds)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await self._reap()
                free = self.config.concurrency - len(self._tasks)
                if free > 0:
                    try:
                        claimed = await self._write(
                            leases.claim,
                            self.db,
                            self.config.worker_id,
                            ttl,
                            free,
                            list(self._tasks),
                            retry=False,  # claimed again at the next poll
                            wrote=bool,  # finding nothing to claim takes no write lock
                        )
                    except LoopsimError as exc:
                        log.warning("claim failed: %s", exc.message, extra={"event": "claim.error"})
                        claimed = []
                    for lease in claimed:
                        self._start(lease)
                    if claimed:  # a run a human just decided, perhaps
                        self._spawn(self._pending.refresh())
                await asyncio.wait(
                    {stop_wait, *self._tasks.values()},
                    timeout=self.config.poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            stop_wait.cancel()

    def _start(self, lease: Lease) -> None:
        self.held[lease.run_id] = lease
        self._deadline[lease.run_id] = time.monotonic() + self.config.lease_seconds
        self.metrics.leases.set(len(self.held))
        ctx = {"event": "lease.claimed", "run_id": lease.run_id, "lease": lease.generation}
        log.info("claimed run %s (lease %d)", lease.run_id, lease.generation, extra=ctx)
        self._tasks[lease.run_id] = asyncio.ensure_future(self._drive(lease))

    async def _reap(self) -> None:
        """Release the leases of runs whose tasks have ended."""
        done = [run_id for run_id, task in self._tasks.items() if task.done()]
        if not done:
            return
        for run_id in done:
            task = self._tasks.pop(run_id)
            if not task.cancelled() and task.exception() is not None:
                ctx = {"event": "run.crashed", "run_id": run_id}
                log.error("run %s task crashed", run_id, exc_info=task.exception(), extra=ctx)
        await self._release([self.held[r] for r in done if r in self.held])

    async def _release(self, held: list[Lease]) -> None:
        mine = [lease for lease in held if lease.run_id not in self._lost]
        try:
            await self._write(leases.release, self.db, mine, retry=False)
        except LoopsimError as exc:  # they expire on their own
            log.warning("release failed: %s", exc.message, extra={"event": "lease.error"})
        for lease in held:
            self.held.pop(lease.run_id, None)
            self._deadline.pop(lease.run_id, None)
            self._lost.discard(lease.run_id)
        self.metrics.leases.set(len(self.held))

    async def _heartbeat(self) -> None:
        ttl = dt.timedelta(seconds=self.config.lease_seconds)
        while True:
            await asyncio.sleep(self.config.lease_seconds / 3)
            held = [lease for run_id, lease in self.held.items() if run_id not in self._lost]
            asked = time.monotonic()
            try:
                lost = await self._write(leases.renew, self.db, held, ttl) if held else []
            except LoopsimError as exc:
                log.warning("heartbeat failed: %s", exc.message, extra={"event": "lease.error"})
                continue
            await self._pending.refresh()  # check-ins other workers opened or humans decided
            gone = {lease.run_id for lease in lost}
            for lease in held:
                if self.held.get(lease.run_id) is not lease:
                    continue  # released while the heartbeat was out (a yield, an idle run)
                if lease.run_id in gone:
                    self._lose(lease.run_id, "the heartbeat found it taken over or expired")
                else:
                    self._deadline[lease.run_id] = asked + self.config.lease_seconds

    def _lose(self, run_id: str, why: str) -> None:
        if run_id in self._lost:
            return
        self._lost.add(run_id)
        self.metrics.leases_lost.inc()
        ctx = {"event": "lease.lost", "run_id": run_id}
        log.warning("lease on run %s lost: %s", run_id, why, extra=ctx)
        task = self._tasks.get(run_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _shutdown(self, heartbeat: asyncio.Task[None]) -> None:
        self._stopping.set()
        tasks = list(self._tasks.values())
        if tasks:
            abandon: asyncio.Future[Any] = asyncio.ensure_future(self._abandon.wait())
            finished: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait(
                {abandon, finished},
                timeout=self.config.grace_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            abandon.cancel()
            unfinished = {r: t for r, t in self._tasks.items() if not t.done()}
            what = self._openings.abandoned(list(unfinished))  # days, check-ins opening
            for task in unfinished.values():
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if unfinished:
                said = "abandoned %s in flight; nothing of them was written"
                log.info(said, what, extra={"event": "stop.abandoned"})
        await self._reap()
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        if self._background:  # webhooks get a moment, never the whole grace period
            await asyncio.wait(self._background, timeout=2)
        if self.http is not None:
            self.http.stop()
        self._db_pool.shutdown(wait=True)
        self._write.shutdown()
        log.info("stopped; all leases released", extra={"event": "serve.stop"})

    # ---------------------------------------------------------------- one run

    async def _hold(self, lease: Lease) -> None:
        """Return while the lease is this worker's. Past the time the heartbeat should
        have renewed it by (this process was frozen, or another held the write lock),
        renew it here, waiting as long as the database stays locked; raise LeaseLost if
        it was taken over or released meanwhile."""
        run_id = lease.run_id
        if run_id not in self._lost and time.monotonic() < self._deadline.get(run_id, 0):
            return
        if run_id not in self._lost:
            asked, ttl = time.monotonic(), dt.timedelta(seconds=self.config.lease_seconds)
            if not await self._write(leases.renew, self.db, [lease], ttl):
                if self.held.get(run_id) is lease:
                    self._deadline[run_id] = asked + self.config.lease_seconds
                return
        raise LeaseLost(f"run {run_id}: lease {lease.generation} was taken over or released")

    async def _checked(self, lease: Lease) -> None:
        """Before each request to the model (:data:`GUARD`): the lease read back by the
        database's clock; one that reads as expired or taken is renewed if it is still
        this worker's."""
        await self._hold(lease)
        try:  # one read for the calls of all runs going out now
            await self._checks.check(lease)
        except LeaseLost:
            self._deadline[lease.run_id] = 0.0
            await self._hold(lease)

    async def _commit(self, lease: Lease, fence: leases.Fence, *args: Any) -> Any:
        """Commit a day. A commit refused for a lease that expired while it waited for
        the write lock, with no claim since, renews the lease and is asked again."""
        tries = 3
        while True:
            await self._hold(lease)
            try:
                return await self._write(
                    self.loop.commit,
                    *args,
                    fence=fence,
                    worker=self.config.worker_id,
                    generation=lease.generation,
                )
            except LeaseLost:
                tries -= 1
                if not tries:
                    raise
                self._deadline[lease.run_id] = 0.0

    async def _drive(self, lease: Lease) -> None:
        """Step one run until it stops being steppable, its lease is lost, or we stop."""
        fence = leases.fence(lease)
        run_id = lease.run_id
        # Before every request to the model, retries included (this task's context only).
        check = functools.partial(self._checked, lease)
        GUARD.set(Guard(check, functools.partial(self._openings.guard, lease), run_id))
        ctx = {"run_id": run_id, "worker": self.config.worker_id}
        days = 0
        try:
            await self._pooled(self._loop.get)  # langchain comes in here, on a thread
            from loopsim.loop import Loop, Turn
            from loopsim.researcher.conversation import adrive

            while not self._stopping.is_set():
                await self._hold(lease)
                if await self._should_yield(days):  # its next claim tests for a check-in
                    said = "run %s yields its slot after %d days: other runs are waiting"
                    log.info(said, run_id, days, extra={**ctx, "event": "run.yielded"})
                    return
                began = time.perf_counter()
                try:
                    # The check-in test first, at a claim too (a worker killed after a commit
                    # left one due); on the loop unless a plan may load a tokenizer or drift embed.
                    lexical = self.loop.similarity is drift.lexical_similarity
                    planned = await (self._db if days and lexical else self._pooled)(
                        self.loop.next_day, run_id
                    )
                    if planned is Turn.CHECKIN_DUE:
                        if await self._openings.open(run_id, fence, ctx):
                            return
                        began = time.perf_counter()  # it raced: step on, with a day of its own
                        planned = await self._pooled(self.loop.plan, run_id)
                except InvalidState as exc:  # paused, halted, awaiting a human: let go
                    log.info(
                        "run %s let go: %s", run_id, exc.message, extra={**ctx, "event": "run.idle"}
                    )
                    return
                if planned is None:
                    await self._write(self.loop.complete, run_id, fence)
                    log.info("run %s completed", run_id, extra={**ctx, "event": "run.completed"})
                    return
                started = utcnow()
                try:
                    researcher = self.loop.researcher(planned)
                except ModelUnavailable as exc:  # cannot even build it: a person must look
                    await self._write(fail_run, self.db, self.metrics, run_id, fence, exc.message)
                    return
                chat = researcher.chat

                async def complete(call: Call, chat: ChatHandle = chat) -> Reply:
                    return await chat.acomplete(call.messages, call.schema, seed=call.seed)

                async def read(fn: Callable[[Store], Any]) -> Any:
                    return await self._db(self.loop.read, fn)

                try:
                    outcome = await adrive(self.loop.conversation(planned), complete, read)
                except ModelUnavailable as exc:
                    outcome = Loop.unreachable(exc, chat.version)
                result = await self._commit(lease, fence, planned, outcome, started)
                account(self.metrics, result, time.perf_counter() - began, ctx, outcome.calls)
                days += 1
                if result.run_failed:  # max_failed_days in a row: a person must look
                    self.metrics.runs_failed.inc()
                    why = await self._db(self.loop.read, lambda s: s.get_run(run_id).status_reason)
                    extra = {**ctx, "event": "run.failed", "error": why}
                    log.error("run %s failed: %s", run_id, why, extra=extra)
                    return
                if result.status != DayStatus.COMMITTED:
                    continue
                if self.db.dialect == "postgresql":  # it may ANALYZE: on a thread
                    await self._db(self.stats.day_committed)
                else:  # only counts: no thread hop for it
                    self.stats.day_committed()
        except LeaseLost as exc:
            self._lose(run_id, exc.message)
        except ConcurrentWrite as exc:
            log.warning("%s", exc.message, extra={**ctx, "event": "day.conflict"})
        except Interrupted as exc:  # a check-in's predictions, stopped (service/openings.py)
            log.info("%s", exc.message, extra={**ctx, "event": "checkin.stopped"})
        except LoopsimError as exc:  # the database is busy or gone: let go, claim later
            log.warning("run %s: %s", run_id, exc.message, extra={**ctx, "event": "run.error"})

    async def _should_yield(self, days: int) -> bool:
        """Whether a run held ``days`` days yields its slot to a waiting run (turns.py)."""
        turn = self.config.yield_after_days
        return 0 < turn <= days and await self._turns.take()

    def _waiting(self, exclude: list[str]) -> int:
        with self.db.read() as session:
            store = Store(session)
            return store.waiting_runs(self.config.worker_id, store.db_now(), exclude)
