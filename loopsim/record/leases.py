"""Leases: which worker may step which run, for how long.

A lease is three columns of ``runs``: an owner, an expiry and a generation. Every claim
bumps the generation, and every write a worker makes for a run checks, in the same
transaction and with the run row locked, that the owner and generation are still its own
and that the lease has not expired. So:

- two workers never hold one run at once (a claim only takes a run whose lease is free,
  expired, or the claimant's own from before a restart);
- a worker paused past its lease that wakes up can never write: its generation is stale,
  or its lease has expired, and :func:`fence` refuses the transaction;
- every expiry is read off the database's clock, never a worker's, at the moment of the
  check (a day's commit checks first and again as its last statement, so a freeze inside
  the transaction cannot commit on an expired lease either);
- a lease that expired while nobody claimed the run (its owner and generation unchanged)
  may be renewed by its holder: no other worker can have called the model for the run or
  written to it in between, since either needs a claim, and a claim bumps the generation.
  On SQLite this is what lets a worker keep its runs after another process held the
  write lock for longer than a lease (a frozen writer): nobody could renew, and nobody
  could take over either.

Who drives a run is one rule: ``loopsim serve`` claims only runs queued for it with
``loopsim run start``. ``loopsim run step`` takes the run for the CLI: it writes the owner
:data:`STEP_OWNER` with no expiry, a mark no worker's lease ever has (a claim always sets
an expiry), so no ``serve`` claims the run until ``run start`` hands it back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update

from loopsim.errors import InvalidState, LeaseLost, LoopsimError, NotFound
from loopsim.record.db import Database
from loopsim.record.runs import LeaseState
from loopsim.record.store import Store
from loopsim.record.tables import Run, utcnow
from loopsim.schemas import RunStatus

STEP_OWNER = "run step"
"""The owner of a run `loopsim run step` drives (with no expiry): serve leaves it alone."""


@dataclass(frozen=True)
class Lease:
    run_id: str
    owner: str
    generation: int


Fence = Callable[[Store, Run], None]
"""Called inside a write transaction with the run row locked; raises to refuse it."""


def fence(lease: Lease) -> Fence:
    """A check that the lease is still live and still this one."""

    def check(store: Store, run: Run) -> None:
        state = LeaseState(
            run.id, run.lease_owner, run.lease_generation, run.lease_expires_at, store.db_now()
        )
        _refuse_unless_live(lease, state)

    return check


def _refuse_unless_live(lease: Lease, state: LeaseState) -> None:
    if state.owner != lease.owner or state.generation != lease.generation:
        raise LeaseLost(
            f"run {state.run_id}: lease {lease.generation} of {lease.owner} was lost "
            f"(now generation {state.generation}, held by {state.owner or 'nobody'}); "
            "nothing written"
        )
    if state.expires_at is None or state.expires_at <= state.now:
        raise LeaseLost(
            f"run {state.run_id}: lease {lease.generation} of {lease.owner} expired; "
            "nothing written"
        )


def claim(
    db: Database, owner: str, ttl: dt.timedelta, limit: int, exclude: Iterable[str] = ()
) -> list[Lease]:
    """Claim up to ``limit`` running runs that no live lease holds.

    A read looks first, and only when it finds a run to claim does a write transaction
    begin: a worker with free slots polls every second or so, and on SQLite every write
    transaction takes the one write lock (a process frozen while holding it stalls every
    writer, so the fewer and shorter the better)."""
    if limit <= 0:
        return []
    skip = tuple(exclude)
    with db.read() as session:
        store = Store(session)
        if not store.waiting_runs(owner, store.db_now(), skip):
            return []
    with db.write() as session:
        store = Store(session)
        now = store.db_now()
        runs = store.claimable_runs(owner, now, limit, skip)
        leases = []
        for run in runs:
            run.lease_owner = owner
            run.lease_generation = (run.lease_generation or 0) + 1
            run.lease_expires_at = now + ttl
            leases.append(Lease(run.id, owner, run.lease_generation))
        session.flush()
        return leases


def _mine(lease: Lease) -> list[object]:
    return [
        Run.id == lease.run_id,
        Run.lease_owner == lease.owner,
        Run.lease_generation == lease.generation,
    ]


def renew(db: Database, leases: Iterable[Lease], ttl: dt.timedelta) -> list[Lease]:
    """Extend leases still this worker's; return the ones that were lost: taken over
    (another generation or owner) or released. A lease that merely expired, with no claim
    since, is renewed: nobody else can have touched the run (see the module docstring)."""
    lost = []
    with db.write() as session:
        store = Store(session)
        now = store.db_now()
        for lease in leases:
            result = session.execute(
                update(Run)
                .where(*_mine(lease), Run.lease_expires_at.is_not(None))  # type: ignore[arg-type]
                .values(lease_expires_at=now + ttl)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                lost.append(lease)
    return lost


def check(db: Database, lease: Lease) -> None:
    """Raise :class:`LeaseLost` unless the lease is still this one and live by the
    database's clock now: one read, no lock. A worker asks before each model call, so one
    that wakes from a freeze to find its run taken over spends no call on it."""
    refused = check_many(db, [lease])
    if lease.run_id in refused:
        raise refused[lease.run_id]


def check_many(db: Database, leases: Sequence[Lease]) -> dict[str, LoopsimError]:
    """:func:`check` for several leases in one read: the error each refused lease would
    raise (:class:`LeaseLost`, or :class:`NotFound` for a run that is gone), by run id.
    A worker whose runs' model calls go out together asks once for all of them; it holds
    one lease a run, so the answers are keyed by run."""
    with db.read() as session:
        states = Store(session).lease_states([lease.run_id for lease in leases])
    refused: dict[str, LoopsimError] = {}
    for lease in leases:
        state = states.get(lease.run_id)
        if state is None:
            refused[lease.run_id] = NotFound(
                f"no run {lease.run_id!r}; `loopsim run list` shows the runs"
            )
            continue
        try:
            _refuse_unless_live(lease, state)
        except LeaseLost as exc:
            refused[lease.run_id] = exc
    return refused


def release(db: Database, leases: Iterable[Lease]) -> None:
    """Give leases back so another worker may claim the runs at once. Each run released
    is stamped ``updated_at`` by the database's clock, so it queues for a new claim
    behind the runs that have waited longer
    (:meth:`loopsim.record.runs.RunQueries.claimable_runs`)."""
    leases = list(leases)
    if not leases:
        return
    with db.write() as session:
        now = Store(session).db_now()
        for lease in leases:
            session.execute(
                update(Run)
                .where(*_mine(lease))  # type: ignore[arg-type]
                .values(lease_owner=None, lease_expires_at=None, updated_at=now)
            )


def live_holder(store: Store, run: Run, now: dt.datetime | None = None) -> str | None:
    """The worker holding a live lease on the run, if any, by the database's clock
    (read now, unless the caller read it once for many runs)."""
    if run.lease_owner is None or run.lease_expires_at is None:
        return None
    return run.lease_owner if run.lease_expires_at > (now or store.db_now()) else None


def held_elsewhere(db: Database, owner: str) -> list[tuple[str, int, dt.datetime]]:
    """The running runs other workers hold live leases on, as (worker, runs, the last
    expiry), by worker: what a worker starting as ``owner`` cannot claim until those
    leases end (a worker that died keeps its runs until then)."""
    with db.read() as session:
        store = Store(session)
        now = store.db_now()
        rows = session.execute(
            select(Run.lease_owner, func.count(), func.max(Run.lease_expires_at))
            .where(
                Run.status == RunStatus.RUNNING,
                Run.lease_owner.is_not(None),
                Run.lease_owner != owner,
                Run.lease_expires_at > now,
            )
            .group_by(Run.lease_owner)
            .order_by(Run.lease_owner)
        )
        return [(str(who), int(n), until) for who, n, until in rows if until is not None]


def stepped_by_cli(run: Run) -> bool:
    """Whether `loopsim run step` drives the run, so that no `serve` claims it."""
    return run.lease_owner == STEP_OWNER and run.lease_expires_at is None


def take_for_cli(run: Run) -> None:
    """Mark the run as driven by `loopsim run step` (inside a write, run row locked). Any
    worker's lease on it is void from here: its owner no longer matches."""
    run.lease_owner, run.lease_expires_at = STEP_OWNER, None


def driver(store: Store, run: Run, now: dt.datetime | None = None) -> str | None:
    """What steps the run, or will when it can go on: ``run step``, ``serve`` (queued,
    no worker holds it now) or ``serve WORKER``; None for a run nothing drives (created,
    completed, halted)."""
    if run.status in (RunStatus.CREATED, RunStatus.COMPLETED, RunStatus.HALTED):
        return None
    if stepped_by_cli(run):
        return STEP_OWNER
    holder = live_holder(store, run, now)
    return f"serve {holder}" if holder else "serve"


def queue_for_service(db: Database, run_ref: str) -> tuple[str, str]:
    """``loopsim run start``: hand a created run, or one ``run step`` drives, to `serve`.
    Returns the run's id and status."""
    with db.write() as session:
        store = Store(session)
        run = store.get_run(run_ref, lock=True)
        if run.status in (RunStatus.COMPLETED, RunStatus.HALTED):
            raise InvalidState(f"run {run.id} is {run.status}; there is nothing left to serve")
        if run.status == RunStatus.CREATED:
            store.set_status(run, RunStatus.RUNNING)
        elif stepped_by_cli(run):
            run.lease_owner = None
            run.updated_at = utcnow()
        else:
            raise InvalidState(
                f"run {run.id} is {run.status} and already queued for `loopsim serve`"
            )
        session.flush()
        return run.id, run.status
