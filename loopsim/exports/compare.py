"""Two runs side by side from their common prefix: the comparison behind ``loopsim run
compare``, the HTML report's ``--compare-parent`` section and ``Loopsim.compare``.

The common prefix comes from the fork lineage (``runs.parent_run_id``, ``fork_day``): a
fork shares its parent's days up to its fork day, a fork of a fork shares its
grandparent's up to the smaller of the two fork days, and two forks of one run share it
up to the earlier fork. Runs with no common ancestor share nothing, and say so. A fork
copies its prefix hash for hash (docs/forks.md), so the prefix is equal by construction;
``record verify`` proves it.

After the prefix, day by day: each run's day (date, status, entry titles), and the
divergence of the two records, 1 - similarity of the two days' texts (entry titles and
bodies, in chain order), with the similarity the drift work configured
(:func:`loopsim.checkin.drift.from_settings`). Equal texts diverge by 0 without asking a
model; a day that one run lacks, or that is not committed in both, has no divergence, and
the row says why (:attr:`DayRow.no_divergence`).
Then the check-ins of each run with their drift, and the predictions each run made for
the probes both banks hold (equal question text). A prediction stays hidden until the
human's blind answer to it is stored, as in every export. Read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loopsim.checkin import drift
from loopsim.record.runs import spec_hash
from loopsim.record.store import Store
from loopsim.record.tables import Day, Run
from loopsim.schemas import DayStatus, RunSpec

# How many ancestors a lineage walk follows: a guard against a cycle written by hand.
MAX_DEPTH = 10_000


@dataclass(frozen=True)
class Prefix:
    """What two runs share. ``days`` is the last shared day index (0: nothing shared);
    ``ancestor`` is the run whose record both copied, None when they are unrelated."""

    ancestor: str | None
    days: int
    relation: str
    external_date: str | None = None


@dataclass(frozen=True)
class DaySide:
    """One run's day at an index."""

    index: int
    external_date: str
    status: str
    titles: list[str]


@dataclass(frozen=True)
class DayRow:
    index: int
    a: DaySide | None
    b: DaySide | None
    divergence: float | None

    @property
    def no_divergence(self) -> str | None:
        """Why the row has no divergence, in a few words (``A reverted``, ``B not
        reached``, ``both failed``); None when it has one. Only days committed in both
        runs are compared: a reverted day is in the chain but in no view of the record."""
        if self.divergence is not None:
            return None
        states = {
            letter: "not reached" if side is None else side.status
            for letter, side in (("A", self.a), ("B", self.b))
            if side is None or side.status != DayStatus.COMMITTED
        }
        if len(states) == 2 and states["A"] == states["B"]:
            return f"both {states['A']}"
        return ", ".join(f"{letter} {state}" for letter, state in states.items()) or None


@dataclass(frozen=True)
class CheckinRow:
    id: int
    reason: str
    first_day: int
    last_day: int
    decision: str | None
    drift_score: float | None
    trend: float | None
    in_prefix: bool


@dataclass(frozen=True)
class Prediction:
    checkin_id: int
    last_day: int
    prediction: str | None  # None until the human's blind answer is stored
    hidden: bool


@dataclass(frozen=True)
class ProbeRow:
    question: str
    a: list[Prediction]
    b: list[Prediction]


@dataclass(frozen=True)
class RunSide:
    id: str
    name: str
    status: str
    model: str
    spec_hash: str
    parent_run_id: str | None
    fork_day: int | None
    last_day: int


@dataclass(frozen=True)
class Comparison:
    """Two runs compared from their common prefix. ``to_dict()`` is the ``--json``
    document (docs/forks.md lists its fields)."""

    a: RunSide
    b: RunSide
    prefix: Prefix
    spec_differs: list[str]
    similarity: str
    days: list[DayRow]
    checkins_a: list[CheckinRow]
    checkins_b: list[CheckinRow]
    probes: list[ProbeRow] = field(default_factory=list)

    @property
    def divergence(self) -> list[tuple[int, float]]:
        """(day index, divergence) for every day both runs committed after the prefix."""
        return [(row.index, row.divergence) for row in self.days if row.divergence is not None]

    @property
    def mean_divergence(self) -> float | None:
        values = [d for _, d in self.divergence]
        return round(sum(values) / len(values), 6) if values else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, day in zip(data["days"], self.days, strict=True):
            row["no_divergence"] = day.no_divergence
        data["mean_divergence"] = self.mean_divergence
        return data


def lineage(store: Store, run: Run) -> list[tuple[str, int | None]]:
    """The run, then each ancestor it descends from, with the last day of that ancestor's
    record the run still shares (None for the run itself: all of it). Stops at a deleted
    ancestor, which is still named, since its forks keep its id."""
    chain: list[tuple[str, int | None]] = [(run.id, None)]
    seen = {run.id}
    shared: int | None = None
    current: Run | None = run
    while current is not None and current.parent_run_id and len(chain) < MAX_DEPTH:
        fork_day = current.fork_day or 0
        shared = fork_day if shared is None else min(shared, fork_day)
        parent_id = current.parent_run_id
        if parent_id in seen:
            break
        seen.add(parent_id)
        chain.append((parent_id, shared))
        current = store.session.get(Run, parent_id)
    return chain


def days_span(days: int) -> str:
    return "day 1" if days == 1 else f"days 1-{days}"


def common_prefix(store: Store, a: Run, b: Run) -> Prefix:
    """The last day index two runs share, through their nearest common ancestor."""
    theirs = dict(lineage(store, b))
    for ancestor, ours in lineage(store, a):
        if ancestor not in theirs:
            continue
        limits = [d for d in (ours, theirs[ancestor]) if d is not None]
        if not limits:
            return Prefix(ancestor, store.last_committed_day(a.id), "the same run")
        days = min(limits)
        if ancestor == a.id:
            relation = f"B descends from A, forked at day {days}"
        elif ancestor == b.id:
            relation = f"A descends from B, forked at day {days}"
        elif a.parent_run_id == b.parent_run_id == ancestor:
            relation = f"both are forks of run {ancestor}; they share its {days_span(days)}"
        else:
            relation = f"both descend from run {ancestor}; they share its {days_span(days)}"
        return Prefix(ancestor, days, relation)
    return Prefix(None, 0, "unrelated runs: no common prefix")


def _held(days: Sequence[Day]) -> dict[int, Day]:
    """Per index, the day that holds it: the committed or reverted one, else the last
    failed try."""
    by_index: dict[int, Day] = {}
    for day in days:
        held = by_index.get(day.index)
        if held is None or held.status == DayStatus.FAILED:
            by_index[day.index] = day
    return by_index


def _day_texts(
    store: Store, run_id: str, after: int
) -> tuple[dict[int, Day], dict[int, list[str]], dict[int, str]]:
    days = {i: d for i, d in _held(store.list_days(run_id)).items() if i > after}
    titles: dict[int, list[str]] = {}
    parts: dict[int, list[str]] = {}
    wanted = {day.id: index for index, day in days.items()}
    if days:
        rows = store.list_entries(run_id, day_range=(after + 1, max(days)))
        for entry, _index, _status in rows:
            index = wanted.get(entry.day_id or 0)
            if index is None:
                continue
            titles.setdefault(index, []).append(entry.title)
            parts.setdefault(index, []).append(f"{entry.title}\n{entry.body}")
    texts = {index: "\n\n".join(body) for index, body in parts.items()}
    return days, titles, texts


def _side(day: Day | None, titles: list[str]) -> DaySide | None:
    if day is None:
        return None
    return DaySide(day.index, day.external_date.isoformat(), day.status, titles)


def divergence(similarity: drift.Similarity, text_a: str, text_b: str) -> float:
    """1 - similarity of two day texts, in [0, 1]; equal texts diverge by exactly 0."""
    if text_a == text_b:
        return 0.0
    return round(max(0.0, min(1.0, 1.0 - similarity(text_a, text_b))), 6)


def _day_rows(store: Store, a: Run, b: Run, after: int, sim: drift.Similarity) -> list[DayRow]:
    days_a, titles_a, texts_a = _day_texts(store, a.id, after)
    days_b, titles_b, texts_b = _day_texts(store, b.id, after)
    rows = []
    for index in sorted(set(days_a) | set(days_b)):
        day_a, day_b = days_a.get(index), days_b.get(index)
        value = None
        if (
            day_a is not None
            and day_b is not None
            and day_a.status == day_b.status == DayStatus.COMMITTED
        ):
            value = divergence(sim, texts_a.get(index, ""), texts_b.get(index, ""))
        rows.append(
            DayRow(
                index,
                _side(day_a, titles_a.get(index, [])),
                _side(day_b, titles_b.get(index, [])),
                value,
            )
        )
    return rows


def _checkins(store: Store, run: Run, prefix: int) -> list[CheckinRow]:
    return [
        CheckinRow(
            c.id,
            c.reason,
            c.first_day_index,
            c.last_day_index,
            c.decision,
            c.drift_score,
            c.trend,
            c.last_day_index <= prefix,
        )
        for c in store.list_checkins(run.id)
    ]


def _predictions(store: Store, run: Run) -> dict[str, list[Prediction]]:
    found: dict[str, list[Prediction]] = {}
    for checkin in store.list_checkins(run.id):
        for pair, probe in store.pairs(checkin.id):
            hidden = pair.answered_at is None
            found.setdefault(probe.question, []).append(
                Prediction(
                    checkin.id,
                    checkin.last_day_index,
                    None if hidden else pair.prediction,
                    hidden,
                )
            )
    return found


def _probe_rows(store: Store, a: Run, b: Run) -> list[ProbeRow]:
    bank_b = {p.question for p in store.list_probes(b.id)}
    shared = [p.question for p in store.list_probes(a.id) if p.question in bank_b]
    ours, theirs = _predictions(store, a), _predictions(store, b)
    return [ProbeRow(q, ours.get(q, []), theirs.get(q, [])) for q in dict.fromkeys(shared)]


def _run_side(store: Store, run: Run) -> RunSide:
    return RunSide(
        run.id,
        run.name,
        run.status,
        run.model,
        spec_hash(run.spec),
        run.parent_run_id,
        run.fork_day,
        store.last_committed_day(run.id),
    )


def _spec_differs(a: Run, b: Run) -> list[str]:
    """The spec's sections whose values differ, every default filled in."""
    spec_a = RunSpec.model_validate(a.spec).model_dump(mode="json")
    spec_b = RunSpec.model_validate(b.spec).model_dump(mode="json")
    differs = [key for key in spec_a if spec_a[key] != spec_b.get(key)]
    return differs + (["model id"] if a.model != b.model else [])


def similarity_name(similarity: drift.Similarity) -> str:
    if similarity is drift.lexical_similarity:
        return drift.LEXICAL_NAME
    return str(getattr(similarity, "name", getattr(similarity, "__name__", "custom")))


def compare(store: Store, a: Run, b: Run, similarity: drift.Similarity) -> Comparison:
    """Compare runs ``a`` and ``b`` from their common prefix (see the module docstring)."""
    prefix = common_prefix(store, a, b)
    if prefix.days:
        held = _held(store.list_days(a.id)).get(prefix.days)
        if held is not None:
            date = held.external_date.isoformat()
            prefix = Prefix(prefix.ancestor, prefix.days, prefix.relation, date)
    return Comparison(
        a=_run_side(store, a),
        b=_run_side(store, b),
        prefix=prefix,
        spec_differs=_spec_differs(a, b),
        similarity=similarity_name(similarity),
        days=_day_rows(store, a, b, prefix.days, similarity),
        checkins_a=_checkins(store, a, prefix.days),
        checkins_b=_checkins(store, b, prefix.days),
        probes=_probe_rows(store, a, b),
    )


def parent_comparison(store: Store, run: Run, similarity: drift.Similarity) -> Comparison | None:
    """A fork compared with its parent (A the parent, B the fork); None for a run that
    is not a fork, or whose parent was deleted."""
    if run.parent_run_id is None:
        return None
    parent = store.session.get(Run, run.parent_run_id)
    return None if parent is None else compare(store, parent, run, similarity)
