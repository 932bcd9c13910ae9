"""All queries over the record, composed from one query class per noun. The store
appends, gets, lists and verifies; it never commits. The caller (``loop.py``, the CLI)
owns the transaction through :meth:`loopsim.record.db.Database.write`.

Each noun's queries live in their own module, over
:class:`~loopsim.record.base.StoreBase` (one session): runs and their leases
(:mod:`~loopsim.record.runs`), days (:mod:`~loopsim.record.days`) and their model calls
(:mod:`~loopsim.record.calls`), entries (:mod:`~loopsim.record.entries`), forks
(:mod:`~loopsim.record.forks`), digests (:mod:`~loopsim.record.digests`), search
(:mod:`~loopsim.record.search`), whole records read in batches
(:mod:`~loopsim.record.streams`), probes and check-ins (:mod:`~loopsim.record.checkins`),
the hash chain (:mod:`~loopsim.record.chain`) and integrity checks
(:mod:`~loopsim.record.integrity`). Callers keep one door, ``Store(session)``, and import
the record's value types from here.
"""

from __future__ import annotations

from loopsim.ids import canonical_json, sha256_hex
from loopsim.record.calls import CallQueries
from loopsim.record.chain import GENESIS, BrokenLink, ChainQueries, VerifyResult, entry_hash
from loopsim.record.checkins import CheckinQueries, CheckinRow, ProbeQueries
from loopsim.record.days import DayQueries, RunTally, TallyQueries
from loopsim.record.digests import DigestQueries, DigestRow, DigestState
from loopsim.record.entries import EntryInput, EntryQueries, EntryText
from loopsim.record.forks import ForkQueries
from loopsim.record.integrity import IntegrityQueries
from loopsim.record.runs import RunQueries
from loopsim.record.search import SearchQueries, dropped_words, search_terms
from loopsim.record.streams import StreamQueries

__all__ = [
    "GENESIS",
    "BrokenLink",
    "CheckinRow",
    "DigestRow",
    "DigestState",
    "EntryInput",
    "EntryText",
    "RunTally",
    "Store",
    "VerifyResult",
    "canonical_json",
    "dropped_words",
    "entry_hash",
    "search_terms",
    "sha256_hex",
]


class Store(
    RunQueries,
    DayQueries,
    TallyQueries,
    CallQueries,
    DigestQueries,
    EntryQueries,
    StreamQueries,
    ForkQueries,
    SearchQueries,
    ChainQueries,
    ProbeQueries,
    CheckinQueries,
    IntegrityQueries,
):
    """Queries over one session. Methods flush when they need ids, never commit."""
