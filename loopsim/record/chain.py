"""The hash chain: one SHA-256 chain per run, in ``seq`` order.

Each entry's hash covers its canonical content and the previous entry's hash, so editing,
deleting or reordering any committed entry breaks every link after it, and
:meth:`ChainQueries.verify_chain` names the first. The bytes hashed here are fixed:
every record ever written depends on them.

A *keyed* chain (``LOOPSIM_CHAIN_KEY``) hashes the same bytes with HMAC-SHA256 under the
key instead, so only a holder of the key can extend it or recompute it after an edit. A
run records that it is keyed in its chain itself: its first entry's ``prev_hash`` is the
keyed genesis (:func:`chain_genesis`, an HMAC of the run id) instead of sixty-four zeros.
So no column or migration is needed, a verifier without the key can tell a keyed run
("set LOOPSIM_CHAIN_KEY") from a broken one, and a verifier with the wrong key is told
so. A run is keyed or plain from its first entry on: a run started without the key stays
plain (and says so), since its first entries were never keyed. The limit: whoever can
write the database can still rewrite a keyed run whole as a plain one; with the key set,
``record verify`` reports such a run as "plain, not keyed" rather than as keyed.

A *fork* (:mod:`loopsim.record.forks`) starts with copies of its parent's entries. A copy
is hashed with the run id and parent entry id of the run that first wrote it
(``origin_run_id``, ``origin_parent_id``), so it keeps its original hash, and its chain
starts from that run's genesis. Verification also checks that the fork's chain, at the
last copied entry, still hashes to the parent's head recorded when it was forked.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from sqlalchemy import Integer, String, bindparam, select

from loopsim.errors import RecordBroken
from loopsim.ids import canonical_json, sha256_hex
from loopsim.record.base import StoreBase
from loopsim.record.tables import Day, Entry, Run
from loopsim.schemas import DayStatus

GENESIS = "0" * 64
# Where a session carries the chain key (bytes), set by loopsim.record.db.Database.
CHAIN_KEY_INFO = "loopsim_chain_key"
KEYED_HINT = "this run's chain is keyed; set LOOPSIM_CHAIN_KEY"

_RUN_ID = bindparam("run_id", type_=String)
_FIRST = select(Entry.prev_hash, Entry.origin_run_id).where(Entry.run_id == _RUN_ID, Entry.seq == 1)
_FORK_POINT = select(Run.fork_seq, Run.fork_head).where(Run.id == _RUN_ID)
_HEAD = (
    select(Entry.seq, Entry.hash).where(Entry.run_id == _RUN_ID).order_by(Entry.seq.desc()).limit(1)
)
# What a link's check reads of each entry: plain rows, not ORM objects (loading each
# entry as an object cost an eighth of a whole verification).
_CHAIN_AFTER = (
    select(
        Entry.id,
        Entry.run_id,
        Entry.parent_id,
        Entry.seq,
        Entry.kind,
        Entry.title,
        Entry.body,
        Entry.author,
        Entry.model_id,
        Entry.model_version,
        Entry.prompt_hash,
        Entry.external_date,
        Entry.created_at,
        Entry.prev_hash,
        Entry.hash,
        Entry.level,
        Entry.first_day,
        Entry.last_day,
        Entry.score,
        Entry.flagged,
        Entry.origin_run_id,
        Entry.origin_parent_id,
        Day.index.label("day_index"),
    )
    .outerjoin(Day, Entry.day_id == Day.id)
    .where(Entry.run_id == _RUN_ID, Entry.seq > bindparam("after_seq", type_=Integer))
    .where(Entry.seq <= bindparam("until_seq", type_=Integer))
    .order_by(Entry.seq)
)
_NO_SEQ_LIMIT = 2**31 - 1  # seq is an INTEGER column


def chain_genesis(run_id: str, key: bytes | None) -> str:
    """The ``prev_hash`` of a run's first entry: zeros for a plain chain, an HMAC of the
    run id for a keyed one (which also tells a verifier whether it holds the right key)."""
    if key is None:
        return GENESIS
    return hmac.new(key, canonical_json({"v": 1, "genesis": run_id}), hashlib.sha256).hexdigest()


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Chained(Protocol):
    """What the chain hashes of an entry: an :class:`Entry`, or a row of its columns."""

    @property
    def id(self) -> int: ...
    @property
    def run_id(self) -> str: ...
    @property
    def parent_id(self) -> int | None: ...
    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def body(self) -> str: ...
    @property
    def author(self) -> str: ...
    @property
    def model_id(self) -> str | None: ...
    @property
    def model_version(self) -> str | None: ...
    @property
    def prompt_hash(self) -> str | None: ...
    @property
    def external_date(self) -> dt.date: ...
    @property
    def created_at(self) -> dt.datetime: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def origin_run_id(self) -> str | None: ...
    @property
    def origin_parent_id(self) -> int | None: ...


def entry_hash(entry: Chained, day_index: int | None, key: bytes | None = None) -> str:
    """The chain hash of one entry: its canonical content plus the previous hash, as
    SHA-256, or as HMAC-SHA256 under ``key`` for a keyed chain."""
    copied = entry.origin_run_id is not None  # a fork's copy hashes as where it was written
    payload = {
        "v": 1,
        "run_id": entry.origin_run_id if copied else entry.run_id,
        "seq": entry.seq,
        "day_index": day_index,
        "parent_id": entry.origin_parent_id if copied else entry.parent_id,
        "kind": entry.kind,
        "title": entry.title,
        "body": entry.body,
        "author": entry.author,
        "model_id": entry.model_id,
        "model_version": entry.model_version,
        "prompt_hash": entry.prompt_hash,
        "external_date": entry.external_date.isoformat(),
        "created_at": _iso(entry.created_at),
        "prev_hash": entry.prev_hash,
    }
    # Amplification fields join the hashed payload only when set, so every entry written
    # before they existed keeps its hash.
    for name in ("level", "first_day", "last_day", "score", "flagged"):
        value = getattr(entry, name)
        if value is not None:
            payload[name] = value
    if key is None:
        return sha256_hex(canonical_json(payload))
    return hmac.new(key, canonical_json(payload), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class BrokenLink:
    seq: int
    day_index: int | None
    entry_id: int
    reason: str

    def describe(self) -> str:
        where = f"day {self.day_index}" if self.day_index is not None else "no day"
        return f"{where}, seq {self.seq} (entry {self.entry_id}): {self.reason}"


@dataclass(frozen=True)
class ChainPoint:
    """A verified point of a chain: its last entry's seq and hash, and whether it is
    keyed. Verification can go on from here without re-reading what came before."""

    seq: int
    hash: str
    keyed: bool


@dataclass(frozen=True)
class VerifyResult:
    run_id: str
    checked: int
    head: str
    broken: BrokenLink | None
    keyed: bool = False
    # The chain is keyed and this process holds no key: it cannot be verified here.
    needs_key: bool = False
    head_seq: int = 0

    @property
    def ok(self) -> bool:
        return self.broken is None

    @property
    def point(self) -> ChainPoint:
        return ChainPoint(self.head_seq, self.head, self.keyed)


class ChainQueries(StoreBase):
    """The head of a run's chain, and its verification."""

    @property
    def chain_key(self) -> bytes | None:
        """The key of keyed chains, if this process holds one (``LOOPSIM_CHAIN_KEY``)."""
        key = self.session.info.get(CHAIN_KEY_INFO)
        return key if isinstance(key, bytes) and key else None

    def first_prev_hash(self, run_id: str) -> str | None:
        """The ``prev_hash`` of the run's first entry: its genesis, or None if it has none."""
        row = self._core().execute(_FIRST, {"run_id": run_id}).first()
        return None if row is None else row[0]

    def genesis_run_id(self, run_id: str) -> str:
        """The run whose genesis the chain starts from: the run itself, or, for a fork, the
        run that wrote the first entry it copied."""
        row = self._core().execute(_FIRST, {"run_id": run_id}).first()
        return (row[1] if row is not None else None) or run_id

    def _fork_point(self, run_id: str) -> tuple[int, str] | None:
        row = self._core().execute(_FORK_POINT, {"run_id": run_id}).first()
        if row is None or not row[0] or row[1] is None:
            return None
        return int(row[0]), str(row[1])

    @staticmethod
    def _fork_fault(entry: Chained, fork: tuple[int, str] | None) -> str | None:
        """A copied entry is only where a fork's prefix is, and the prefix must end in
        the head recorded at the fork: copies cannot be passed off as a run's own work."""
        prefix = fork[0] if fork is not None else 0
        if entry.origin_run_id is not None and entry.seq > prefix:
            return "a copy of another run's entry outside the prefix this run was forked with"
        if fork is not None and entry.seq == fork[0] and entry.hash != fork[1]:
            return (
                "the last entry copied from the parent does not hash to the parent's head "
                "recorded when the run was forked"
            )
        return None

    def chain_head(self, run_id: str) -> tuple[int, str]:
        row = self._core().execute(_HEAD, {"run_id": run_id}).first()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def emptied_day(self, run_id: str) -> int | None:
        """The first day that holds an index (committed or reverted) yet no entry, if any.

        A chain checks every link from its genesis to its last entry, so entries cut
        from its end leave a chain that verifies. Every day a human could see wrote at
        least one entry (a report has one or more), and nothing deletes an entry: a day
        without any is where the record was cut."""
        entries = select(Entry.id).where(Entry.day_id == Day.id).exists()
        stmt = (
            select(Day.index)
            .where(Day.run_id == run_id, Day.status.in_(HELD), ~entries)
            .order_by(Day.index)
            .limit(1)
        )
        return self.session.scalar(stmt)

    def iter_chain(
        self, run_id: str, batch: int = 500, after_seq: int = 0, until_seq: int | None = None
    ) -> Iterator[tuple[Chained, int | None]]:
        """The run's entries in ``seq`` order, ``batch`` rows at a time, each with its
        day's index: rows carrying an entry's columns by name, not ORM objects."""
        params = {
            "run_id": run_id,
            "after_seq": after_seq,
            "until_seq": _NO_SEQ_LIMIT if until_seq is None else until_seq,
        }
        rows = self._core().execute(_CHAIN_AFTER, params, execution_options={"yield_per": batch})
        for row in rows:
            yield cast(Chained, row), row.day_index

    @staticmethod
    def _link_fault(
        entry: Chained,
        day_index: int | None,
        expected_seq: int,
        prev: str,
        key: bytes | None,
        keyed: bool,
    ) -> str | None:
        if entry.seq != expected_seq:
            return f"expected seq {expected_seq}; an entry is missing or out of order"
        if entry.prev_hash != prev:
            return "prev_hash does not match the entry before it"
        if entry_hash(entry, day_index, key if keyed else None) != entry.hash:
            what = "keyed hash" if keyed else "hash"
            return f"content does not match its {what} (edited after commit)"
        return None

    def verify_chain(
        self, run_id: str, since: ChainPoint | None = None, until_seq: int | None = None
    ) -> VerifyResult:
        """Recompute every hash in order; stop at the first broken link. From ``since``
        (a point verified before), only the entries after it are read and checked; with
        ``until_seq``, none after that one (a fork's prefix in its parent)."""
        key = self.chain_key
        prev, expected_seq, keyed = GENESIS, 1, False
        if since is not None:
            prev, expected_seq, keyed = since.hash, since.seq + 1, since.keyed
        checked = 0
        # Read at the first entry to check: a loop's check of a chain it extended itself
        # usually finds none, and then needs no fork point.
        fork = functools.cache(lambda: self._fork_point(run_id))
        chain = self.iter_chain(run_id, after_seq=expected_seq - 1, until_seq=until_seq)
        for entry, day_index in chain:
            reason = None
            if entry.seq == 1 and entry.prev_hash != GENESIS:
                # Not the plain genesis: a keyed chain, or an edited first entry.
                if key is None:
                    link = BrokenLink(entry.seq, day_index, entry.id, KEYED_HINT)
                    return VerifyResult(run_id, 0, prev, link, True, needs_key=True)
                keyed, prev = True, chain_genesis(entry.origin_run_id or run_id, key)
                if entry.prev_hash != prev:
                    reason = (
                        "its genesis is neither the plain one nor this LOOPSIM_CHAIN_KEY's: "
                        "the run was keyed with another key, or its first entry was edited"
                    )
            reason = reason or self._link_fault(entry, day_index, expected_seq, prev, key, keyed)
            reason = reason or self._fork_fault(entry, fork())
            if reason:
                link = BrokenLink(entry.seq, day_index, entry.id, reason)
                return VerifyResult(run_id, checked, prev, link, keyed, head_seq=expected_seq - 1)
            prev = entry.hash
            expected_seq += 1
            checked += 1
        return VerifyResult(run_id, checked, prev, None, keyed, head_seq=expected_seq - 1)


HELD = (DayStatus.COMMITTED.value, DayStatus.REVERTED.value)  # days that hold an index


def emptied_text(day_index: int) -> str:
    """What :meth:`ChainQueries.emptied_day` found, for a user."""
    return (
        f"day {day_index} holds no entries: entries were deleted from the record (its "
        "chain still verifies up to where it was cut); restore it from a backup"
    )


class VerifiedHeads:
    """The head of each run's chain that this process has verified, so a long-lived
    loop reads a run's chain whole once and then only the entries written since."""

    def __init__(self) -> None:
        self.points: dict[str, ChainPoint] = {}

    def check(self, store: ChainQueries, run_id: str) -> None:
        """Verify what is new in the run's chain; raise :class:`RecordBroken` if a link
        fails, naming the command that shows it."""
        point = self.points.get(run_id)
        if point is not None and store.chain_head(run_id) == (point.seq, point.hash):
            return  # nothing written since: one indexed probe, not the ORM's read of none
        result = store.verify_chain(run_id, since=point)
        if result.needs_key:
            raise RecordBroken(f"run {run_id}: {KEYED_HINT} to step it")
        if not result.ok:
            assert result.broken is not None
            raise RecordBroken(
                f"run {run_id}'s record does not verify ({result.broken.describe()}); "
                f"not stepped: `loopsim record verify {run_id}` names the broken link"
            )
        self.points[run_id] = result.point

    def extend(self, run_id: str, entries: Sequence[Entry]) -> None:
        """Once they are committed: ``entries`` this process chained right onto the
        head it verified need not be read back. Anything else (entries another process
        wrote in between) is left to the next :meth:`check`."""
        point = self.points.get(run_id)
        if point is None or not entries:
            return
        if entries[0].seq == point.seq + 1 and entries[0].prev_hash == point.hash:
            self.points[run_id] = ChainPoint(entries[-1].seq, entries[-1].hash, point.keyed)
