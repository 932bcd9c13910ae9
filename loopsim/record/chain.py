"""The hash chain: one SHA-256 chain per run, in ``seq`` order.

Each entry's hash covers its canonical content and the previous entry's hash, so editing,
deleting or reordering any committed entry breaks every link after it, and
:meth:`ChainQueries.verify_chain` names the first. The bytes hashed here are fixed:
every record ever written depends on them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import select

from loopsim.ids import canonical_json, sha256_hex
from loopsim.record.base import StoreBase
from loopsim.record.tables import Day, Entry

GENESIS = "0" * 64


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_hash(entry: Entry, day_index: int | None) -> str:
    """The chain hash of one entry: its canonical content plus the previous hash."""
    payload = {
        "v": 1,
        "run_id": entry.run_id,
        "seq": entry.seq,
        "day_index": day_index,
        "parent_id": entry.parent_id,
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
    return sha256_hex(canonical_json(payload))


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
class VerifyResult:
    run_id: str
    checked: int
    head: str
    broken: BrokenLink | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class ChainQueries(StoreBase):
    """The head of a run's chain, and its verification."""

    def chain_head(self, run_id: str) -> tuple[int, str]:
        row = self.session.execute(
            select(Entry.seq, Entry.hash)
            .where(Entry.run_id == run_id)
            .order_by(Entry.seq.desc())
            .limit(1)
        ).first()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def iter_chain(self, run_id: str, batch: int = 500) -> Iterator[tuple[Entry, int | None]]:
        stmt = (
            select(Entry, Day.index)
            .outerjoin(Day, Entry.day_id == Day.id)
            .where(Entry.run_id == run_id)
            .order_by(Entry.seq)
            .execution_options(yield_per=batch)
        )
        yield from self.session.execute(stmt)

    def verify_chain(self, run_id: str) -> VerifyResult:
        """Recompute every hash in order; stop at the first broken link."""
        prev = GENESIS
        expected_seq = 1
        checked = 0
        for entry, day_index in self.iter_chain(run_id):
            reason = None
            if entry.seq != expected_seq:
                reason = f"expected seq {expected_seq}; an entry is missing or out of order"
            elif entry.prev_hash != prev:
                reason = "prev_hash does not match the entry before it"
            elif entry_hash(entry, day_index) != entry.hash:
                reason = "content does not match its hash (edited after commit)"
            if reason:
                link = BrokenLink(entry.seq, day_index, entry.id, reason)
                return VerifyResult(run_id, checked, prev, link)
            prev = entry.hash
            expected_seq += 1
            checked += 1
        return VerifyResult(run_id, checked, prev, None)
