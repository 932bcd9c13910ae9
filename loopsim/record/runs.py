"""Runs: creating, finding and listing them, their status, the lease queries, and the one
way a run leaves the record (:meth:`RunQueries.delete_run`).

A lease is three columns of ``runs`` (:mod:`loopsim.record.leases` holds its rules); the
queries here only find the runs a worker may claim, by the database's clock.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
)

from loopsim import ids
from loopsim.errors import NotFound, SpecError
from loopsim.record.base import StoreBase
from loopsim.record.tables import CallRecord, CheckIn, Day, Entry, Probe, ProbePair, Run, utcnow
from loopsim.schemas import RunSpec, RunStatus

_RUN = select(Run).where(Run.id == bindparam("id", type_=String))  # built once: every day reads it
_RUN_LOCKED = _RUN.with_for_update()


class LeaseState(NamedTuple):
    run_id: str
    owner: str | None
    generation: int | None
    expires_at: dt.datetime | None
    now: dt.datetime  # by the database's clock


def _now(dialect: str) -> Any:
    """The database's clock as a column: PostgreSQL's wall clock now (not the
    transaction's start), SQLite's with milliseconds."""
    if dialect == "postgresql":
        return literal_column("clock_timestamp() AT TIME ZONE 'UTC'")
    return literal_column("strftime('%Y-%m-%d %H:%M:%f', 'now')")


def _as_utc(value: Any) -> dt.datetime:
    """A clock read by :func:`_now` (SQLite gives text) as an aware UTC datetime."""
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=dt.UTC)


def _claimable(owner: Any, now: Any) -> ColumnElement[bool]:
    return and_(
        Run.status == RunStatus.RUNNING,
        or_(
            Run.lease_owner.is_(None),
            and_(
                Run.lease_expires_at.is_not(None),
                or_(Run.lease_expires_at <= now, Run.lease_owner == owner),
            ),
        ),
    )


# How many runs a worker could claim, but those it steps: asked once a day by a run
# that has had its turn. Built once.
_WAITING = (
    select(func.count())
    .select_from(Run)
    .where(_claimable(bindparam("owner"), bindparam("now")))
    .where(Run.id.not_in(bindparam("exclude", expanding=True)))
)


@functools.cache
def _clock_statement(dialect: str) -> Any:
    return select(_now(dialect))


@functools.cache
def _lease_statement(dialect: str) -> Any:
    return select(
        Run.id, Run.lease_owner, Run.lease_generation, Run.lease_expires_at, _now(dialect)
    ).where(Run.id.in_(bindparam("ids", expanding=True)))


def spec_hash(spec: RunSpec | dict[str, Any]) -> str:
    """SHA-256 of a run spec's canonical JSON, every default filled in: a spec stored
    before a section existed (``[conditional]``, say) hashes as the spec its run really
    runs under, and a run's conditional is always part of its hash."""
    if isinstance(spec, dict):
        spec = RunSpec.model_validate(spec)
    return ids.sha256_hex(ids.canonical_json(spec.model_dump(mode="json")))


_NOT_IN_A_NAME = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # line breaks, tabs, escapes


def new_run(
    spec: RunSpec, *, name: str, model: str, created_at: dt.datetime | None = None, **fork: Any
) -> Run:
    """A new run row, not yet added: its own id and secret seed, status ``created``.
    ``created_at`` (a fork keeps its parent's) and ``fork`` (the fork columns) if given.
    A name is one line of 1 to 200 characters: `run list` shows it as a table cell."""
    if not name.strip() or len(name) > 200 or _NOT_IN_A_NAME.search(name):
        raise SpecError(
            f"run name {name!r}: give 1 to 200 characters on one line, without control characters"
        )
    now = utcnow()
    return Run(
        id=ids.new_id(),
        name=name,
        status=RunStatus.CREATED,
        spec=spec.model_dump(mode="json"),
        model=model,
        secret_seed=secrets.token_hex(32),
        created_at=created_at or now,
        updated_at=now,
        lease_generation=0,
        **fork,
    )


class RunQueries(StoreBase):
    """One run at a time, by id or prefix; claimable runs; deleting a run whole."""

    def create_run(self, spec: RunSpec, *, name: str, model: str) -> Run:
        run = new_run(spec, name=name, model=model)
        now = run.created_at
        self.session.add(run)
        self.session.flush()
        for question in spec.probes:
            self.session.add(
                Probe(
                    run_id=run.id,
                    question=question,
                    source="spec",
                    status="accepted",
                    created_at=now,
                )
            )
        self.session.flush()
        return run

    def get_run(self, ref: str, *, lock: bool = False) -> Run:
        """A run by id or unique id prefix (at least 4 characters)."""
        ref = ref.strip().lower()
        if len(ref) < 4:
            raise NotFound(f"run id {ref!r} is too short; give at least 4 characters")
        if len(ref) == ids.LENGTH:  # a whole id: the primary key, not a LIKE scan
            locking = lock and self.dialect == "postgresql"
            found = list(self.session.scalars(_RUN_LOCKED if locking else _RUN, {"id": ref}))
        else:
            stmt = select(Run).where(Run.id.startswith(ref, autoescape=True)).limit(2)
            if lock and self.dialect == "postgresql":
                stmt = stmt.with_for_update()
            found = list(self.session.scalars(stmt))
        if not found:
            raise NotFound(f"no run {ref!r}; `loopsim run list` shows the runs")
        if len(found) > 1:
            raise NotFound(f"run id {ref!r} is ambiguous; give more characters")
        return found[0]

    def list_runs(self) -> Sequence[Run]:
        return self.session.scalars(select(Run).order_by(Run.id)).all()

    def set_status(self, run: Run, status: RunStatus, reason: str | None = None) -> None:
        """Set the run's status. A run made running again (resumed, or approved at a
        check-in) starts its failed-day streak afresh: only tries after its last day row
        now count toward failing it (:meth:`DayQueries.failed_streak`)."""
        if status == RunStatus.RUNNING and run.status != RunStatus.RUNNING:
            last = self.session.scalar(select(func.max(Day.id)).where(Day.run_id == run.id))
            run.resumed_after_day_id = int(last or 0)
        run.status = status
        run.status_reason = reason
        run.updated_at = utcnow()
        self.session.flush()

    def db_now(self) -> dt.datetime:
        """The database server's clock, in UTC. Leases expire by this clock alone, so
        workers on machines whose clocks disagree still agree on who holds a run."""
        return _as_utc(self._scalar(_clock_statement(self.dialect), {}))

    def lease_states(self, run_ids: Sequence[str]) -> dict[str, LeaseState]:
        """The runs' leases and the database's clock, in one read: what a worker checks
        before each model call, for every run whose call is about to go out. A run that
        does not exist is missing from the answer."""
        rows = self._core().execute(_lease_statement(self.dialect), {"ids": list(run_ids)})
        return {
            run_id: LeaseState(run_id, owner, generation, expires_at, _as_utc(now))
            for run_id, owner, generation, expires_at, now in rows
        }

    def claimable_runs(
        self, owner: str, now: dt.datetime, limit: int, exclude: Sequence[str] = ()
    ) -> list[Run]:
        """Running runs with no live lease (or a lease of ``owner``'s own, left by a
        restart), the one that waited longest first: a release stamps ``updated_at``
        (:func:`loopsim.record.leases.release`), so a run that just yielded its slot
        queues behind the runs that were waiting for one. A run with an owner and no
        expiry is one ``run step`` drives (:func:`loopsim.record.leases.take_for_cli`):
        never claimed. PostgreSQL skips rows another worker is claiming right now
        (``FOR UPDATE SKIP LOCKED``); SQLite's single writer makes that moot."""
        stmt = (
            select(Run).where(_claimable(owner, now)).order_by(Run.updated_at, Run.id).limit(limit)
        )
        if exclude:
            stmt = stmt.where(Run.id.not_in(list(exclude)))
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return list(self.session.scalars(stmt))

    def waiting_runs(self, owner: str, now: dt.datetime, exclude: Sequence[str] = ()) -> int:
        """How many runs ``owner`` could claim now, leaving out ``exclude`` (the runs it
        steps): the runs waiting for a slot. A plain count that locks nothing."""
        params = {"owner": owner, "now": now, "exclude": list(exclude)}
        return int(self._scalar(_WAITING, params) or 0)

    def delete_run(self, run_id: str) -> dict[str, int]:
        """Delete one run and every row that belongs to it, children first, in the
        caller's transaction; returns how many rows of each table went. Rows of other
        runs are never touched: each statement names this run."""
        checkins = select(CheckIn.id).where(CheckIn.run_id == run_id).scalar_subquery()
        counts: dict[str, int] = {}
        if self.dialect == "sqlite":
            # entries_fts is an external-content FTS5 index: it forgets a row only when
            # told the row's indexed values, so tell it before the rows go.
            self.session.execute(
                text(
                    "INSERT INTO entries_fts(entries_fts, rowid, title, body, run_id) "
                    "SELECT 'delete', id, title, body, run_id FROM entries WHERE run_id = :r"
                ).bindparams(r=run_id)
            )
        for name, stmt in (
            ("probe_pairs", delete(ProbePair).where(ProbePair.checkin_id.in_(checkins))),
            ("checkins", delete(CheckIn).where(CheckIn.run_id == run_id)),
            ("probes", delete(Probe).where(Probe.run_id == run_id)),
            ("calls", delete(CallRecord).where(CallRecord.run_id == run_id)),
            ("entries", delete(Entry).where(Entry.run_id == run_id)),
            ("days", delete(Day).where(Day.run_id == run_id)),
            ("runs", delete(Run).where(Run.id == run_id)),
        ):
            result = self.session.execute(stmt.execution_options(synchronize_session=False))
            counts[name] = int(getattr(result, "rowcount", 0) or 0)
        self.session.expunge_all()
        return counts
