"""All queries over the record. The store appends, gets, lists and verifies; it never
commits. The caller (``loop.py``, the CLI) owns the transaction through
:meth:`loopsim.record.db.Database.write`.

Entries form one SHA-256 chain per run, in ``seq`` order. Each entry's hash covers its
canonical content and the previous entry's hash, so editing, deleting or reordering any
committed entry breaks every link after it, and :meth:`Store.verify_chain` names the first.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Date,
    Float,
    Integer,
    String,
    and_,
    bindparam,
    column,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session

from loopsim import ids
from loopsim.errors import NotFound
from loopsim.record.tables import (
    CallRecord,
    CheckIn,
    Day,
    Entry,
    IntegrityCheck,
    Probe,
    ProbePair,
    Run,
    utcnow,
)
from loopsim.schemas import Author, DayStatus, EntryKind, RunSpec, RunStatus

GENESIS = "0" * 64


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
class DigestState:
    """What the digests of a run cover: ``covered`` maps each level to the last day its
    digests reach; ``uncovered`` lists, per level and oldest first, the digests no digest
    of the level above covers yet (one per range: a human's amendment stands)."""

    covered: dict[int, int]
    uncovered: dict[int, list[Entry]]
    complete: bool


@dataclass(frozen=True)
class EntryInput:
    kind: str
    title: str
    body: str
    author: str = Author.RESEARCHER
    parent_id: int | None = None
    # The parent as an index into the same batch, for trees written in one go.
    parent: int | None = None
    level: int | None = None
    first_day: int | None = None
    last_day: int | None = None
    score: int | None = None
    flagged: bool | None = None


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


# A word is a run of letters and digits. Words of 3 or more characters are searched
# (MLP, SAE, GPU); a 2-character word only when written in capitals (KL, RL, AI),
# because nearly every lowercase one (of, in, is, to) is a function word. Both indexes
# keep 2- and 3-letter tokens, so no new index is needed.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP_WORDS = """
am an as at be by do he if in is it me my no of on or so to up us we
all and any are but can did for get got had has her him his how its let may
nor not now off one our out own per she the too two use was way who why yet you
that this with from have what which when where there their about would could
should into than then them they these those your been were will does
"""  # 2-letter ones for queries written in capitals
_STOP = frozenset(_STOP_WORDS.split())


def _searchable(word: str) -> bool:
    if len(word) < 2 or (len(word) == 2 and not word.isupper()):
        return False
    return word.lower() not in _STOP


def search_terms(query: str, limit: int = 24) -> list[str]:
    """Words worth matching: long enough (or capitals), not stop words, deduplicated, in
    order, in lower case."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query):
        if _searchable(word):
            seen.setdefault(word.lower(), None)
    return list(seen)[:limit]


def dropped_words(query: str) -> list[str]:
    """The query's words that :func:`search_terms` leaves out, as written, once each."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query):
        if not _searchable(word):
            seen.setdefault(word, None)
    return list(seen)


_NO_DAY_LIMIT = 2**31 - 1


def _levels() -> Any:
    """Levels 1..``top`` as rows."""
    levels = select(literal(1, Integer).label("level")).cte("levels", recursive=True)
    return levels.union_all(
        select((levels.c.level + 1).label("level")).where(
            levels.c.level < bindparam("top", type_=Integer)
        )
    )


def _level_ends_statement() -> Any:
    """For levels 1..``top``: the last day the newest visible digest of that level covers
    (written on or before day ``written_by``). Built once: only the parameters change, so
    no day pays for building it, and each level is one indexed probe."""
    levels = _levels()
    end = (
        select(Entry.last_day)
        .outerjoin(Day, Entry.day_id == Day.id)
        .where(
            Entry.run_id == bindparam("run_id", type_=String),
            Entry.level == levels.c.level,
            Entry.kind == EntryKind.DIGEST.value,
            or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED.value),
            Entry.external_date <= bindparam("until", type_=Date),
            or_(Entry.day_id.is_(None), Day.index <= bindparam("written_by", type_=Integer)),
        )
        .order_by(Entry.last_day.desc())
        .limit(1)
        .correlate(levels)
        .scalar_subquery()
    )
    return select(levels.c.level, end.label("last_day"))


_LEVEL_ENDS = _level_ends_statement()


@functools.lru_cache(maxsize=16)
def _uncovered_statement(levels: int) -> Any:
    """The visible digests of levels 1..``levels`` that start after ``after_<level>`` (the
    reach of the level above): one index range per level. An OR over the levels would
    make the database read every digest of the run. The ids drive the outer query; with
    the run and kind there too, the database would rather walk the run's digests in
    index order than sort a few. Built once per number of levels."""
    ids = union_all(
        *(
            select(Entry.id).where(
                Entry.run_id == bindparam("run_id", type_=String),
                Entry.level == level,
                Entry.first_day > bindparam(f"after_{level}", type_=Integer),
            )
            for level in range(1, levels + 1)
        )
    )
    return (
        select(Entry, Day.index, Day.status)
        .outerjoin(Day, Entry.day_id == Day.id)
        .where(Entry.id.in_(ids), Entry.kind == EntryKind.DIGEST.value)
        .where(
            or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED.value),
            Entry.external_date <= bindparam("until", type_=Date),
            or_(Entry.day_id.is_(None), Day.index <= bindparam("written_by", type_=Integer)),
        )
        .order_by(Entry.level, Entry.first_day, Entry.seq.desc())
        .limit(bindparam("limit", type_=Integer))
    )


class Store:
    """Queries over one session. Methods flush when they need ids, never commit."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name

    # ------------------------------------------------------------------------- runs

    def create_run(self, spec: RunSpec, *, name: str, model: str) -> Run:
        now = utcnow()
        run = Run(
            id=ids.new_id(),
            name=name,
            status=RunStatus.CREATED,
            spec=spec.model_dump(mode="json"),
            model=model,
            secret_seed=secrets.token_hex(32),
            created_at=now,
            updated_at=now,
            lease_generation=0,
        )
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
            stmt = select(Run).where(Run.id == ref)
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
        run.status = status
        run.status_reason = reason
        run.updated_at = utcnow()
        self.session.flush()

    # ----------------------------------------------------------------------- leases

    def db_now(self) -> dt.datetime:
        """The database server's clock, in UTC. Leases expire by this clock alone, so
        workers on machines whose clocks disagree still agree on who holds a run."""
        if self.dialect == "postgresql":
            value = self.session.scalar(text("SELECT clock_timestamp() AT TIME ZONE 'UTC'"))
        else:
            value = dt.datetime.fromisoformat(
                str(self.session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")))
            )
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)

    def claimable_runs(
        self, owner: str, now: dt.datetime, limit: int, exclude: Sequence[str] = ()
    ) -> list[Run]:
        """Running runs with no live lease (or a lease of ``owner``'s own, left by a
        restart), oldest-touched first. A run with an owner and no expiry is one
        ``run step`` drives (:func:`loopsim.lease.take_for_cli`): never claimed. PostgreSQL
        skips rows another worker is claiming right now (``FOR UPDATE SKIP LOCKED``);
        SQLite's single writer makes that moot."""
        stmt = (
            select(Run)
            .where(
                Run.status == RunStatus.RUNNING,
                or_(
                    Run.lease_owner.is_(None),
                    and_(
                        Run.lease_expires_at.is_not(None),
                        or_(Run.lease_expires_at <= now, Run.lease_owner == owner),
                    ),
                ),
            )
            .order_by(Run.updated_at, Run.id)
            .limit(limit)
        )
        if exclude:
            stmt = stmt.where(Run.id.not_in(list(exclude)))
        if self.dialect == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return list(self.session.scalars(stmt))

    def failed_streak(self, run_id: str, limit: int) -> int:
        """How many of the run's latest days, up to ``limit``, failed in a row."""
        statuses = self.session.scalars(
            select(Day.status)
            .where(Day.run_id == run_id, Day.status != DayStatus.REVERTED)
            .order_by(Day.index.desc())
            .limit(limit)
        ).all()
        streak = 0
        for status in statuses:
            if status != DayStatus.FAILED:
                break
            streak += 1
        return streak

    def pending_checkins(self) -> int:
        return int(
            self.session.scalar(
                select(func.count()).select_from(CheckIn).where(CheckIn.decision.is_(None))
            )
            or 0
        )

    # ------------------------------------------------------------------------- days

    def next_day_index(self, run_id: str) -> int:
        last = self.session.scalar(select(func.max(Day.index)).where(Day.run_id == run_id))
        return 1 if last is None else last + 1

    def count_days(self, run_id: str, status: DayStatus | None = None) -> int:
        stmt = select(func.count()).select_from(Day).where(Day.run_id == run_id)
        if status is not None:
            stmt = stmt.where(Day.status == status)
        return int(self.session.scalar(stmt) or 0)

    def get_day(self, run_id: str, index: int) -> Day:
        day = self.session.scalar(select(Day).where(Day.run_id == run_id, Day.index == index))
        if day is None:
            raise NotFound(f"run {run_id} has no day {index}")
        return day

    def list_days(self, run_id: str) -> Sequence[Day]:
        return self.session.scalars(
            select(Day).where(Day.run_id == run_id).order_by(Day.index)
        ).all()

    def add_day(self, day: Day) -> Day:
        self.session.add(day)
        self.session.flush()
        return day

    def token_totals(self, run_id: str) -> tuple[int, int]:
        row = self.session.execute(
            select(
                func.coalesce(func.sum(Day.tokens_in), 0),
                func.coalesce(func.sum(Day.tokens_out), 0),
            ).where(Day.run_id == run_id)
        ).one()
        return int(row[0] or 0), int(row[1] or 0)

    def day_calls(self, day_id: int) -> Sequence[CallRecord]:
        """Every model call a day made, retries included, in the order they were made."""
        return self.session.scalars(
            select(CallRecord).where(CallRecord.day_id == day_id).order_by(CallRecord.ordinal)
        ).all()

    # ---------------------------------------------------------------------- entries

    def chain_head(self, run_id: str) -> tuple[int, str]:
        row = self.session.execute(
            select(Entry.seq, Entry.hash)
            .where(Entry.run_id == run_id)
            .order_by(Entry.seq.desc())
            .limit(1)
        ).first()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def entry_seqs(self, run_id: str) -> dict[int, int]:
        """Entry id -> seq for a run: how exports name an entry's parent."""
        rows = self.session.execute(select(Entry.id, Entry.seq).where(Entry.run_id == run_id))
        return {entry_id: seq for entry_id, seq in rows}

    def append_entries(
        self,
        run_id: str,
        items: Sequence[EntryInput],
        *,
        day: Day | None,
        external_date: dt.date,
        model_id: str | None = None,
        model_version: str | None = None,
        prompt_hash: str | None = None,
    ) -> list[Entry]:
        """Append entries to the run's chain. Ids and hashes are set before returning.

        An item's ``parent`` names an earlier item of the same batch; the parent is
        flushed first so its id, which the child's hash covers, is known."""
        seq, prev = self.chain_head(run_id)
        now = utcnow()
        created: list[Entry] = []
        parents = {item.parent for item in items if item.parent is not None}
        for position, item in enumerate(items):
            seq += 1
            parent_id = item.parent_id
            if item.parent is not None:
                if not 0 <= item.parent < position:
                    raise ValueError(f"entry {position} names parent {item.parent}, not before it")
                parent_id = created[item.parent].id
            entry = Entry(
                run_id=run_id,
                day_id=day.id if day is not None else None,
                parent_id=parent_id,
                seq=seq,
                kind=item.kind,
                title=item.title,
                body=item.body,
                author=item.author,
                model_id=model_id,
                model_version=model_version,
                prompt_hash=prompt_hash,
                external_date=external_date,
                created_at=now,
                prev_hash=prev,
                hash="",
                level=item.level,
                first_day=item.first_day,
                last_day=item.last_day,
                score=item.score,
                flagged=item.flagged,
            )
            entry.hash = entry_hash(entry, day.index if day is not None else None)
            prev = entry.hash
            self.session.add(entry)
            created.append(entry)
            if position in parents:
                self.session.flush()
        self.session.flush()
        return created

    def _entries_with_day(self, run_id: str) -> Any:
        return (
            select(Entry, Day.index, Day.status)
            .outerjoin(Day, Entry.day_id == Day.id)
            .where(Entry.run_id == run_id)
        )

    @staticmethod
    def _visible() -> Any:
        return or_(Entry.day_id.is_(None), Day.status == DayStatus.COMMITTED)

    def list_entries(
        self,
        run_id: str,
        *,
        day_index: int | None = None,
        day_range: tuple[int, int] | None = None,
        include_reverted: bool = True,
    ) -> list[tuple[Entry, int | None, str | None]]:
        if day_index is not None or day_range is not None:
            # Inner join, so the database can start from the few days asked for (by their
            # run and index) rather than walk every entry of the run.
            stmt = (
                select(Entry, Day.index, Day.status)
                .join(Day, Entry.day_id == Day.id)
                .where(Day.run_id == run_id)
                .order_by(Entry.seq)
            )
            if day_index is not None:
                stmt = stmt.where(Day.index == day_index)
            if day_range is not None:
                stmt = stmt.where(Day.index.between(*day_range))
        else:
            stmt = self._entries_with_day(run_id).order_by(Entry.seq)
        if not include_reverted:
            stmt = stmt.where(self._visible())
        return [(e, idx, status) for e, idx, status in self.session.execute(stmt)]

    def pinned_corrections(self, run_id: str, until: dt.date, limit: int = 50) -> list[Entry]:
        """Human corrections, oldest first: every view includes them."""
        stmt = (
            self._entries_with_day(run_id)
            .where(Entry.kind == EntryKind.CORRECTION, Entry.author == Author.HUMAN)
            .where(self._visible(), Entry.external_date <= until)
            .order_by(Entry.seq.desc())
            .limit(limit)
        )
        return [row[0] for row in reversed(self.session.execute(stmt).all())]

    def latest_digest(self, run_id: str, until: dt.date) -> Entry | None:
        stmt = (
            self._entries_with_day(run_id)
            .where(Entry.kind == EntryKind.DIGEST)
            .where(self._visible(), Entry.external_date <= until)
            .order_by(Entry.seq.desc())
            .limit(1)
        )
        row = self.session.execute(stmt).first()
        return None if row is None else row[0]

    # ---------------------------------------------------------------------- digests

    def _digest_rows(self, run_id: str, until: dt.date, written_by: int | None = None) -> Any:
        stmt = (
            self._entries_with_day(run_id)
            .where(Entry.kind == EntryKind.DIGEST, Entry.level.is_not(None))
            .where(self._visible(), Entry.external_date <= until)
        )
        if written_by is not None:
            stmt = stmt.where(or_(Entry.day_id.is_(None), Day.index <= written_by))
        return stmt

    def max_digest_level(self, run_id: str, until: dt.date, written_by: int | None = None) -> int:
        stmt = self._digest_rows(run_id, until, written_by).with_only_columns(func.max(Entry.level))
        return int(self.session.scalar(stmt) or 0)

    def covered_through(self, run_id: str, level: int, until: dt.date) -> int:
        """The last day a visible digest of ``level`` covers (0: none)."""
        stmt = (
            self._digest_rows(run_id, until)
            .where(Entry.level == level)
            .with_only_columns(func.max(Entry.last_day))
        )
        return int(self.session.scalar(stmt) or 0)

    def digests(
        self,
        run_id: str,
        level: int,
        *,
        after_day: int,
        until: dt.date,
        limit: int = 50,
        written_by: int | None = None,
    ) -> list[Entry]:
        """Visible digests of ``level`` starting after ``after_day``, oldest range first
        (only those written on or before day ``written_by``, if given). Of several digests
        of one range (a human amended it), the newest stands."""
        stmt = (
            self._digest_rows(run_id, until, written_by)
            .where(Entry.level == level, Entry.first_day > after_day)
            .order_by(Entry.first_day, Entry.seq.desc())
            .limit(limit * 4)
        )
        chosen: dict[tuple[int | None, int | None], Entry] = {}
        for entry, _idx, _status in self.session.execute(stmt):
            chosen.setdefault((entry.first_day, entry.last_day), entry)
        return list(chosen.values())[:limit]

    def _level_ends(self, run_id: str, until: dt.date, written_by: int | None) -> dict[int, int]:
        """The last day each level's visible digests reach: one prepared statement, one
        indexed probe per level (newest range first), however many digests there are."""
        top = self.session.scalar(
            select(func.max(Entry.level)).where(Entry.run_id == run_id, Entry.level.is_not(None))
        )
        if not top:
            return {}
        rows = self.session.execute(
            _LEVEL_ENDS,
            {
                "run_id": run_id,
                "top": int(top),
                "until": until,
                "written_by": _NO_DAY_LIMIT if written_by is None else written_by,
            },
        )
        return {int(level): int(end) for level, end in rows if end is not None}

    def digest_state(
        self, run_id: str, until: dt.date, written_by: int | None = None, limit: int = 400
    ) -> DigestState:
        """Each level's last covered day and its digests no higher level covers yet, in
        two queries however many levels there are. ``complete`` is False if ``limit``
        cut the second query short."""
        covered = self._level_ends(run_id, until, written_by)
        uncovered: dict[int, list[Entry]] = {level: [] for level in covered}
        if not covered:
            return DigestState(covered, uncovered, True)
        top = max(covered)
        params: dict[str, Any] = {
            "run_id": run_id,
            "until": until,
            "written_by": _NO_DAY_LIMIT if written_by is None else written_by,
            "limit": limit + 1,
        }
        params.update({f"after_{level}": covered.get(level + 1, 0) for level in range(1, top + 1)})
        stmt = _uncovered_statement(top).params(params)
        found = list(self.session.execute(stmt))
        seen: set[tuple[int | None, int | None, int | None]] = set()
        for entry, _idx, _status in found[:limit]:
            key = (entry.level, entry.first_day, entry.last_day)
            if key not in seen:  # of several digests of one range, the newest stands
                seen.add(key)
                uncovered[entry.level or 0].append(entry)
        return DigestState(covered, uncovered, len(found) <= limit)

    def pinned_digests(
        self,
        run_id: str,
        until: dt.date,
        *,
        before_day: int | None = None,
        written_by: int | None = None,
        per_level: int = 50,
        state: DigestState | None = None,
    ) -> list[Entry]:
        """The digests no higher-level digest covers, oldest range first: together they
        cover every digested day (before ``before_day``, if given) once. A level holds
        fewer than ``every_days`` of them (more would have been compressed), so this
        stays short however long the record. ``written_by`` keeps only the digests written
        on or before that day: the tiling as it stood then, which later digests (a level
        compressing the one below) do not change. ``state``, if given, must be
        ``digest_state`` of the same run, date and ``written_by``."""
        if state is None:  # a caller may pass the state it already read for this date
            state = self.digest_state(run_id, until, written_by)
        pinned: list[Entry] = []
        covered = 0
        for level in range(max(state.covered, default=0), 0, -1):
            if state.complete and covered == state.covered.get(level + 1, 0):
                # The usual case: the levels above tiled all they cover, so what follows
                # them at this level is exactly what no higher level covers.
                found = state.uncovered.get(level, [])[:per_level]
            else:
                found = self.digests(
                    run_id,
                    level,
                    after_day=covered,
                    until=until,
                    limit=per_level,
                    written_by=written_by,
                )
            run: list[Entry] = []
            for digest in found:  # contiguous from ``covered``, stopping at the window
                if digest.first_day != covered + 1 and (run or covered):
                    break
                if before_day is not None and (digest.last_day or 0) >= before_day:
                    break
                run.append(digest)
                covered = digest.last_day or covered
            pinned.extend(run)
        return sorted(pinned, key=lambda d: d.first_day or 0)

    def digest_boundaries(self, run_id: str, until: dt.date, limit: int = 64) -> list[int]:
        """Days just after a visible level-1 digest ends, newest first: where the view's
        raw window may start so that digests tile every day before it."""
        stmt = (
            self._digest_rows(run_id, until)
            .where(Entry.level == 1)
            .with_only_columns(Entry.last_day)
            .distinct()
            .order_by(Entry.last_day.desc())
            .limit(limit)
        )
        return [int(day) + 1 for day in self.session.scalars(stmt)]

    def amend_digest(self, run_id: str, seq: int, body: str) -> Entry:
        """A human's version of a digest: a new entry of the same level and range, in the
        same day (so it is reverted with it), that stands in the view from now on."""
        original = self.session.scalar(
            select(Entry).where(Entry.run_id == run_id, Entry.seq == seq)
        )
        if original is None or original.kind != EntryKind.DIGEST or original.level is None:
            raise NotFound(f"run {run_id} has no digest #{seq}; `loopsim record show` lists them")
        day = self.session.get(Day, original.day_id) if original.day_id is not None else None
        (entry,) = self.append_entries(
            run_id,
            [
                EntryInput(
                    EntryKind.DIGEST,
                    original.title
                    if original.title.endswith("(amended)")
                    else f"{original.title[:108]} (amended)",
                    body,
                    author=Author.HUMAN,
                    parent_id=original.id,
                    level=original.level,
                    first_day=original.first_day,
                    last_day=original.last_day,
                )
            ],
            day=day,
            external_date=original.external_date,
        )
        return entry

    def committed_day_indexes(
        self, run_id: str, *, after: int, before: int, limit: int
    ) -> list[int]:
        return list(
            self.session.scalars(
                select(Day.index)
                .where(
                    Day.run_id == run_id,
                    Day.status == DayStatus.COMMITTED,
                    Day.index > after,
                    Day.index < before,
                )
                .order_by(Day.index)
                .limit(limit)
            )
        )

    def recent_entries(
        self,
        run_id: str,
        until: dt.date,
        *,
        before_seq: int | None = None,
        limit: int = 50,
        after_day: int = 0,
    ) -> list[tuple[Entry, int | None]]:
        """Newest visible research entries first, one page at a time; only days after
        ``after_day`` (and entries outside any day)."""
        stmt = (
            self._entries_with_day(run_id)
            .where(Entry.kind.not_in([EntryKind.DIGEST, EntryKind.CORRECTION]))
            .where(self._visible(), Entry.external_date <= until)
            .order_by(Entry.seq.desc())
            .limit(limit)
        )
        if before_seq is not None:
            stmt = stmt.where(Entry.seq < before_seq)
        if after_day:
            stmt = stmt.where(or_(Entry.day_id.is_(None), Day.index > after_day))
        return [(e, idx) for e, idx, _status in self.session.execute(stmt)]

    def _id_range(
        self, run_id: str, seq_range: tuple[int, int] | None
    ) -> tuple[int | None, int | None]:
        """The ids of a run's entries at both ends of ``seq_range`` (default: all of them).
        Ids grow with seq within a run."""
        if seq_range is None:
            first_seq, last_seq = 1, self.chain_head(run_id)[0]
        else:
            first_seq, last_seq = seq_range
        rows = self.session.execute(
            select(Entry.seq, Entry.id).where(
                Entry.run_id == run_id, Entry.seq.in_([first_seq, last_seq])
            )
        )
        ends = {seq: entry_id for seq, entry_id in rows}
        return ends.get(first_seq), ends.get(last_seq)

    def search(
        self,
        run_id: str,
        query: str,
        *,
        until: dt.date | None = None,
        before_day: int | None = None,
        include_reverted: bool = False,
        limit: int = 20,
        seq_range: tuple[int, int] | None = None,
    ) -> list[tuple[Entry, int | None, str | None]]:
        """Full-text matches for any of the query's words, best first; with
        ``seq_range`` (first and last seq, inclusive), only among those entries, so the
        cost need not grow with the record."""
        terms = search_terms(query)
        if not terms:
            return []
        if self.dialect == "sqlite":
            # The run's entries have ids from its first entry's to its last's. Bounding
            # rowids there is cheap for FTS5; matching the run_id column instead would
            # walk a posting list as long as the run (6 ms of 7 at 10^5 entries).
            lo, hi = self._id_range(run_id, seq_range)
            if lo is None or hi is None:
                return []
            words = " OR ".join(f'"{t}"' for t in terms)
            ranked = (
                text(
                    "SELECT rowid AS id, rank AS score FROM entries_fts "
                    "WHERE entries_fts MATCH :q AND rowid BETWEEN :lo AND :hi"
                )
                .columns(column("id", Integer), column("score", Float))
                .bindparams(q=words, lo=lo, hi=hi)
                .subquery("fts")
            )
            score = ranked.c.score.asc()
        else:
            tsq = func.to_tsquery("english", " | ".join(terms))
            doc = func.to_tsvector("english", Entry.title + " " + Entry.body)
            ranked = (
                select(Entry.id.label("id"), func.ts_rank(doc, tsq).label("score"))
                .where(Entry.run_id == run_id, doc.op("@@")(tsq))
                .subquery("fts")
            )
            score = ranked.c.score.desc()
        stmt = (
            self._entries_with_day(run_id)
            .join(ranked, ranked.c.id == Entry.id)
            .order_by(score, Entry.seq.desc())
            .limit(limit)
        )
        if until is not None:
            stmt = stmt.where(Entry.external_date <= until)
        if before_day is not None:
            stmt = stmt.where(or_(Entry.day_id.is_(None), Day.index < before_day))
        if not include_reverted:
            stmt = stmt.where(self._visible())
        if seq_range is not None and self.dialect != "sqlite":
            stmt = stmt.where(Entry.seq.between(*seq_range))
        return [(e, idx, status) for e, idx, status in self.session.execute(stmt)]

    # ---------------------------------------------------------------- check-ins

    def propose_probes(self, entries: Sequence[Entry]) -> int:
        """Offer each researcher question as a probe; a human must accept it first."""
        count = 0
        for entry in entries:
            if entry.kind == EntryKind.QUESTION and entry.author == Author.RESEARCHER:
                self.session.add(
                    Probe(
                        run_id=entry.run_id,
                        question=entry.body[:500],
                        source="researcher",
                        status="proposed",
                        proposed_in_entry_id=entry.id,
                        created_at=entry.created_at,
                    )
                )
                count += 1
        self.session.flush()
        return count

    def list_probes(self, run_id: str, status: str | None = None) -> Sequence[Probe]:
        stmt = select(Probe).where(Probe.run_id == run_id).order_by(Probe.id)
        if status is not None:
            stmt = stmt.where(Probe.status == status)
        return self.session.scalars(stmt).all()

    def get_probe(self, probe_id: int) -> Probe:
        probe = self.session.get(Probe, probe_id)
        if probe is None:
            raise NotFound(f"no probe {probe_id}; `loopsim probe list RUN` shows them")
        return probe

    def list_checkins(
        self, run_id: str | None = None, *, pending: bool = False
    ) -> Sequence[CheckIn]:
        stmt = select(CheckIn).order_by(CheckIn.id)
        if run_id is not None:
            stmt = stmt.where(CheckIn.run_id == run_id)
        if pending:
            stmt = stmt.where(CheckIn.decision.is_(None))
        return self.session.scalars(stmt).all()

    def get_checkin(self, checkin_id: int) -> CheckIn:
        found = self.session.get(CheckIn, checkin_id)
        if found is None:
            raise NotFound(f"no check-in {checkin_id}; `loopsim checkin list` shows them")
        return found

    def last_checkin(self, run_id: str) -> CheckIn | None:
        return self.session.scalar(
            select(CheckIn).where(CheckIn.run_id == run_id).order_by(CheckIn.id.desc()).limit(1)
        )

    def pairs(self, checkin_id: int) -> Sequence[tuple[ProbePair, Probe]]:
        rows = self.session.execute(
            select(ProbePair, Probe)
            .join(Probe, ProbePair.probe_id == Probe.id)
            .where(ProbePair.checkin_id == checkin_id)
            .order_by(ProbePair.id)
        )
        return [(pair, probe) for pair, probe in rows]

    def last_committed_day(self, run_id: str) -> int:
        last = self.session.scalar(
            select(func.max(Day.index)).where(
                Day.run_id == run_id, Day.status == DayStatus.COMMITTED
            )
        )
        return int(last or 0)

    def committed_days_after(self, run_id: str, index: int) -> int:
        """Committed days after day ``index``, at the cost of two index probes and the
        failed and reverted days after it, however many days the run has committed.

        Day indices are dense: each day takes the next index (:meth:`next_day_index`,
        under the run's unique ``(run_id, index)``) and no day is ever deleted, so the
        days after ``index`` are ``last - index``, and the committed ones are those less
        the failed and reverted ones among them.
        """
        last = self.next_day_index(run_id) - 1
        if last <= index:
            return 0
        others = self.session.scalar(
            select(func.count())
            .select_from(Day)
            .where(
                Day.run_id == run_id,
                Day.status.in_([DayStatus.FAILED, DayStatus.REVERTED]),
                Day.index > index,
            )
        )
        return last - index - int(others or 0)

    def revert_days(self, run_id: str, after: int, through: int) -> int:
        """Mark committed days in (after, through] reverted. Their entries stay."""
        days = self.session.scalars(
            select(Day).where(
                Day.run_id == run_id,
                Day.index > after,
                Day.index <= through,
                Day.status == DayStatus.COMMITTED,
            )
        ).all()
        for day in days:
            day.status = DayStatus.REVERTED
        self.session.flush()
        return len(days)

    # ----------------------------------------------------------------------- verify

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

    # ------------------------------------------------------------- integrity checks

    def record_integrity_check(
        self, *, quick: bool, problems: int, runs: int, entries: int, version: str
    ) -> IntegrityCheck:
        check = IntegrityCheck(
            checked_at=utcnow(),
            quick=quick,
            ok=problems == 0,
            problems=problems,
            runs=runs,
            entries=entries,
            loopsim_version=version,
        )
        self.session.add(check)
        self.session.flush()
        return check

    def last_integrity_check(self) -> IntegrityCheck | None:
        return self.session.scalars(
            select(IntegrityCheck).order_by(IntegrityCheck.id.desc()).limit(1)
        ).first()

    # ------------------------------------------------------------------ deletion

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
