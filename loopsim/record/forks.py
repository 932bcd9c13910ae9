"""Forks: a new run whose record starts as a copy of another run's record up to a day.

A fork copies its parent's prefix rather than sharing it (docs/forks.md says why): the
days up to the fork day (with their status, so a day a check-in reverted stays reverted
and out of every view), every entry of the chain before the first entry of a later day
(human notes written between the days included), the probe bank, and the check-ins
decided on days up to the fork day with their probe pairs. Model calls stay with the run
that made them.

A copied entry keeps its seq, its ``prev_hash`` and its hash: it is hashed with the run id
and parent entry id of the run that first wrote it (``origin_run_id``,
``origin_parent_id``, :func:`loopsim.record.chain.entry_hash`). So the fork's chain up to
the fork point *is* the parent's chain there, hash for hash; the fork records the parent's
head at that point (``runs.fork_head``), its own verification recomputes it, and
:meth:`ForkQueries.prove_prefix` checks it against the parent's chain as it stands.

Nothing here changes a row of the parent. Like the rest of the store, it never commits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, case, func, insert, literal, select, update
from sqlalchemy.orm import aliased

from loopsim.errors import InvalidState, SpecError
from loopsim.record.base import StoreBase
from loopsim.record.chain import GENESIS, ChainQueries
from loopsim.record.runs import new_run
from loopsim.record.tables import CheckIn, Day, Entry, Probe, ProbePair, Run
from loopsim.schemas import DayStatus, RunSpec, parse_spec

# What a fork may change. The rest (probes, digests, sub-questions, babble) shaped the
# prefix the fork shares with its parent, so a fork keeps them.
OVERRIDABLE = ("conditional", "persona", "charter", "model", "time", "checkins", "budget")


def _columns(table: Any, *skip: str) -> tuple[str, ...]:
    """Every column a copy takes as it is: all but ids and what the copy sets itself.
    Read from the table, so a column added later is copied too."""
    return tuple(c.key for c in table.__table__.columns if c.key not in ("id", *skip))


_DAY_COLUMNS = _columns(Day, "run_id")
_ENTRY_COLUMNS = _columns(
    Entry, "run_id", "day_id", "parent_id", "origin_run_id", "origin_parent_id"
)
_CHECKIN_COLUMNS = _columns(CheckIn, "run_id")
_PAIR_COLUMNS = _columns(ProbePair, "checkin_id", "probe_id")


def merge_overrides(
    spec: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str
) -> RunSpec:
    """The parent's spec with ``overrides`` merged in, validated as a spec.

    Tables merge key by key (``[persona] name`` alone keeps the background); a ``[time]``
    that names a ``policy`` replaces the time policy whole, since each policy has its own
    fields. A key outside :data:`OVERRIDABLE` is refused with one line."""
    unknown = [key for key in overrides if key not in OVERRIDABLE]
    if unknown:
        raise SpecError(
            f"{source}: {unknown[0]}: cannot be overridden in a fork "
            f"(overridable: {', '.join(OVERRIDABLE)})"
        )
    merged: dict[str, Any] = dict(spec)
    for key, value in overrides.items():
        old = merged.get(key)
        if key == "time" and isinstance(value, dict) and "policy" in value:
            merged[key] = value
        elif isinstance(old, dict) and isinstance(value, dict):
            merged[key] = {**old, **value}
        else:
            merged[key] = value
    return parse_spec(merged, source=source)


@dataclass(frozen=True)
class ForkCopy:
    """What a fork took from its parent."""

    run: Run
    days: int
    entries: int
    probes: int
    checkins: int


@dataclass(frozen=True)
class PrefixProof:
    """Whether a fork's copied prefix equals its parent's record, as ``record verify``
    reports it. ``parent_found`` is False once the parent was deleted: then only the head
    recorded at the fork is checked (by the fork's own chain verification)."""

    parent_id: str
    fork_day: int
    entries: int
    head: str
    parent_found: bool
    ok: bool
    reason: str | None = None


def _copy(row: Any, columns: tuple[str, ...], **values: Any) -> dict[str, Any]:
    return {**{name: getattr(row, name) for name in columns}, **values}


class PrefixCopy(StoreBase):
    """The rows of a parent's prefix, copied into a fork: one noun's rows at a time, each
    returning the map from the parent's ids to the copies' ids that the next one needs."""

    # The days and the entries are copied by the database itself (INSERT ... SELECT): a
    # prefix can hold 10^5 entries and as many prompts, none of which need to pass
    # through Python (a copy that did held them all at once: 490 MB for 10^5 entries).
    # One statement cannot see its own rows, so a reply's parent is set after.

    def _copy_days(self, parent_id: str, run_id: str, at_day: int) -> int:
        """The parent's days up to ``at_day``, failed tries included as history, in their
        order (index, then id); how many hold an index (all but failed tries)."""
        source = (
            select(literal(run_id, String), *[getattr(Day, name) for name in _DAY_COLUMNS])
            .where(Day.run_id == parent_id, Day.index <= at_day)
            .order_by(Day.index, Day.id)
        )
        self.session.execute(insert(Day).from_select(["run_id", *_DAY_COLUMNS], source))
        held = self.session.scalar(
            select(func.count()).where(Day.run_id == run_id, Day.status != DayStatus.FAILED)
        )
        return int(held or 0)

    def _copy_entries(self, parent_id: str, run_id: str, seq: int) -> int:
        """The parent's entries up to ``seq``, each in the copy of its day (the fork's day
        at the same index that holds it), then each reply pointed at the copy of its
        parent (the fork's entry with the parent's seq); how many were copied."""
        old_day, new_day = aliased(Day), aliased(Day)
        source = (
            select(
                literal(run_id, String),
                new_day.id,
                Entry.parent_id,  # the parent's own id for now: see the UPDATE below
                # Hashed as where it was first written (a copy of a copy included).
                func.coalesce(Entry.origin_run_id, parent_id),
                case(
                    (Entry.origin_run_id.is_not(None), Entry.origin_parent_id),
                    else_=Entry.parent_id,
                ),
                *[getattr(Entry, name) for name in _ENTRY_COLUMNS],
            )
            .select_from(Entry)
            .outerjoin(old_day, old_day.id == Entry.day_id)
            .outerjoin(
                new_day,
                and_(
                    new_day.run_id == run_id,
                    new_day.index == old_day.index,
                    new_day.status != DayStatus.FAILED,
                ),
            )
            .where(Entry.run_id == parent_id, Entry.seq <= seq)
            .order_by(Entry.seq)
        )
        names = ["run_id", "day_id", "parent_id", "origin_run_id", "origin_parent_id"]
        names += _ENTRY_COLUMNS
        self.session.execute(insert(Entry).from_select(names, source))
        # A copied reply names the parent's entry (a row that exists, as the foreign key
        # wants, and an id the same size as its copy's, so the row is rewritten in place);
        # now name the copy of it: the fork's entry with that entry's seq.
        named, copy = aliased(Entry), aliased(Entry)
        parent_copy = (
            select(copy.id)
            .select_from(named)
            .join(copy, and_(copy.run_id == run_id, copy.seq == named.seq))
            .where(named.id == Entry.parent_id)
            .scalar_subquery()
        )
        self.session.execute(
            update(Entry)
            .where(Entry.run_id == run_id, Entry.parent_id.is_not(None))
            .values(parent_id=parent_copy)
        )
        return int(self.session.scalar(select(func.count()).where(Entry.run_id == run_id)) or 0)

    def _entry_copies(
        self, parent_id: str, run_id: str, entry_ids: Iterable[int]
    ) -> dict[int, int]:
        """The fork's copies of these parent entries, by the parent's entry id (an entry
        past the fork point has none)."""
        wanted = sorted(set(entry_ids))
        if not wanted:
            return {}
        old, new = aliased(Entry), aliased(Entry)
        rows = self.session.execute(
            select(old.id, new.id)
            .join(new, and_(new.run_id == run_id, new.seq == old.seq))
            .where(old.run_id == parent_id, old.id.in_(wanted))
        )
        return {old_id: new_id for old_id, new_id in rows}

    def _copy_probes(self, parent_id: str, run_id: str) -> dict[int, int]:
        """The probe bank: probes from the spec or a human, and those proposed by entries
        the fork copied, each with its status."""
        probes = self.session.scalars(
            select(Probe).where(Probe.run_id == parent_id).order_by(Probe.id)
        ).all()
        entry_ids = self._entry_copies(
            parent_id, run_id, (p.proposed_in_entry_id for p in probes if p.proposed_in_entry_id)
        )
        kept = [
            p
            for p in probes
            if p.proposed_in_entry_id is None or p.proposed_in_entry_id in entry_ids
        ]
        copies = [
            Probe(
                run_id=run_id,
                question=p.question,
                source=p.source,
                status=p.status,
                proposed_in_entry_id=(
                    entry_ids[p.proposed_in_entry_id] if p.proposed_in_entry_id else None
                ),
                created_at=p.created_at,
            )
            for p in kept
        ]
        self.session.add_all(copies)
        self.session.flush()
        return {p.id: c.id for p, c in zip(kept, copies, strict=True)}

    def _copy_checkins(
        self, parent_id: str, run_id: str, at_day: int, probe_ids: dict[int, int]
    ) -> int:
        """Check-ins decided on days up to the fork day, with their probe pairs: the
        schedule, the drift trend, retests and a per-check-in clock read them."""
        checkins = self.session.scalars(
            select(CheckIn)
            .where(
                CheckIn.run_id == parent_id,
                CheckIn.last_day_index <= at_day,
                CheckIn.decision.is_not(None),
            )
            .order_by(CheckIn.id)
        ).all()
        for checkin in checkins:
            copy = CheckIn(**_copy(checkin, _CHECKIN_COLUMNS, run_id=run_id))
            self.session.add(copy)
            self.session.flush()
            pairs = self.session.scalars(
                select(ProbePair).where(ProbePair.checkin_id == checkin.id).order_by(ProbePair.id)
            ).all()
            self.session.add_all(
                ProbePair(
                    **_copy(pair, _PAIR_COLUMNS, checkin_id=copy.id),
                    probe_id=probe_ids[pair.probe_id],
                )
                for pair in pairs
                if pair.probe_id in probe_ids
            )
        self.session.flush()
        return len(checkins)


class ForkQueries(PrefixCopy, ChainQueries):
    """Forking a run, finding a run's forks, and proving a fork's prefix."""

    def forks_of(self, run_id: str) -> list[Run]:
        return list(
            self.session.scalars(select(Run).where(Run.parent_run_id == run_id).order_by(Run.id))
        )

    def _prefix_seq(self, parent_id: str, at_day: int) -> int:
        """How many entries of the parent's chain come before the first entry of a day
        after ``at_day``: the entries its day ``at_day + 1`` could have seen."""
        later = self.session.scalar(
            select(func.min(Entry.seq))
            .join(Day, Entry.day_id == Day.id)
            .where(Entry.run_id == parent_id, Day.index > at_day)
        )
        if later is not None:
            return int(later) - 1
        return self.chain_head(parent_id)[0]

    def fork_run(
        self, parent: Run, at_day: int, spec: RunSpec, *, name: str, model: str
    ) -> ForkCopy:
        """Create a run whose record is ``parent``'s up to day ``at_day`` and which goes on
        under ``spec``. Refuses a day outside 1 .. the parent's last committed day."""
        last = self.session.scalar(
            select(func.max(Day.index)).where(Day.run_id == parent.id, Day.status == "committed")
        )
        if at_day < 1 or last is None or at_day > last:
            have = f"committed days up to day {last}" if last else "no committed day"
            raise InvalidState(f"run {parent.id} has {have}; cannot fork it at day {at_day}")
        seq = self._prefix_seq(parent.id, at_day)
        head = GENESIS
        if seq:
            head = str(
                self.session.scalar(
                    select(Entry.hash).where(Entry.run_id == parent.id, Entry.seq == seq)
                )
            )
        run = new_run(
            spec,
            name=name,
            model=model,
            # The clock a wall-clock time policy reads starts where the parent's did.
            created_at=parent.created_at,
            parent_run_id=parent.id,
            fork_day=at_day,
            fork_seq=seq,
            fork_head=head,
        )
        self.session.add(run)
        self.session.flush()
        days = self._copy_days(parent.id, run.id, at_day)
        # Failed tries of the prefix do not count toward failing the fork.
        last_row = self.session.scalar(select(func.max(Day.id)).where(Day.run_id == run.id))
        run.resumed_after_day_id = int(last_row or 0)
        entries = self._copy_entries(parent.id, run.id, seq)
        probe_ids = self._copy_probes(parent.id, run.id)
        checkins = self._copy_checkins(parent.id, run.id, at_day, probe_ids)
        return ForkCopy(run, days, entries, len(probe_ids), checkins)

    def prove_prefix(self, fork: Run) -> PrefixProof | None:
        """For a fork, whether its parent's chain, verified up to the fork point, ends in
        the head the fork recorded (and its own chain recomputes); None for a run that is
        not a fork. Reads the parent's prefix, not the fork's: the fork's own chain is
        verified by :meth:`ChainQueries.verify_chain`."""
        if fork.parent_run_id is None or fork.fork_day is None:
            return None
        seq, head = fork.fork_seq or 0, fork.fork_head or GENESIS
        proof = PrefixProof(fork.parent_run_id, fork.fork_day, seq, head, False, True)
        if self.session.get(Run, fork.parent_run_id) is None:
            return proof  # deleted: the fork's own chain still checks the recorded head
        found = PrefixProof(fork.parent_run_id, fork.fork_day, seq, head, True, True)
        result = self.verify_chain(fork.parent_run_id, until_seq=seq)
        if result.needs_key:
            return _failed(found, "the parent's chain is keyed; set LOOPSIM_CHAIN_KEY")
        if result.broken is not None:
            return _failed(found, f"the parent's chain is broken at {result.broken.describe()}")
        if result.head_seq < seq or result.head != head:
            return _failed(
                found, f"the parent's chain at seq {seq} is not the head the fork recorded"
            )
        return found


def _failed(proof: PrefixProof, reason: str) -> PrefixProof:
    return dataclasses.replace(proof, ok=False, reason=reason)
