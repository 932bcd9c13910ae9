"""Check-ins: when the loop stops for a human, and what the human decides.

Nothing here is visible to a day's researcher: ``researcher.py`` and ``view.py`` never
import this module, and the schedule, the spot-check seed and the counts never enter a
prompt.

- :func:`due` says whether a check-in is due now, from the run's state alone, so it gives
  the same answer after a crash and restart.
- Spot checks draw from an RNG seeded with the run's secret seed and the day index: the
  model cannot predict them, and a replay gives the same schedule.
- :func:`record_answer` stores a human's blind answer before anything reveals the
  prediction; :func:`rate` then stores the agreement rating and similarity.
- :func:`decide` applies approve, amend, reject or halt, once: a second decision is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopsim.checkin import drift
from loopsim.clock import external_date
from loopsim.errors import InvalidState, SpecError
from loopsim.record.db import Database
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import CheckIn, Probe, ProbePair, Run, utcnow
from loopsim.schemas import (
    Author,
    CheckinPolicy,
    CheckinReason,
    Decision,
    EntryKind,
    RunSpec,
    RunStatus,
)
from loopsim.text import plural

APPROVING = (Decision.APPROVE, Decision.AMEND)


def spot_check_fires(secret_seed: str, day_index: int, probability: float) -> bool:
    """A draw the model cannot predict: seeded by a secret it never sees."""
    return random.Random(f"{secret_seed}:spot:{day_index}").random() < probability


def approving(checkins: Sequence[CheckIn]) -> list[CheckIn]:
    return [c for c in checkins if c.decision in APPROVING]


def approved_count(store: Store, run_id: str) -> int:
    return len(approving(store.list_checkins(run_id)))


def last_approved_day(store: Store, run_id: str) -> int:
    approved = approving(store.list_checkins(run_id))
    return approved[-1].last_day_index if approved else 0


def adaptive_interval(scores: Sequence[float | None], policy: CheckinPolicy) -> int:
    """Days between scheduled check-ins after these decided check-ins' drift scores."""
    return adaptive_schedule(scores, policy)[0]


def adaptive_schedule(scores: Sequence[float | None], policy: CheckinPolicy) -> tuple[int, str]:
    """The interval after these drift scores, and why the last score that changed it did."""
    interval, why = policy.every_days, f"every_days = {policy.every_days}"
    if not policy.adaptive:
        return interval, why
    low_run = 0
    for score in scores:
        if score is None:
            continue
        if score >= policy.drift_alarm:
            interval, low_run = max(1, interval // 2), 0
            why = f"drift {score:.2f} reached the alarm {policy.drift_alarm:.2f}"
        elif score < policy.drift_warn:
            low_run += 1
            if low_run >= 2:
                longer = min(policy.max_interval_days, math.ceil(interval * 1.5))
                if longer != interval:
                    why = f"two drift scores in a row below the warning {policy.drift_warn:.2f}"
                interval, low_run = longer, 0
        else:
            low_run = 0
    return interval, why


def schedule_change(
    before: Sequence[float | None], after: Sequence[float | None], policy: CheckinPolicy
) -> str | None:
    """One line on how a decision changed the scheduled interval, or None if it did not."""
    old, _ = adaptive_schedule(before, policy)
    new, why = adaptive_schedule(after, policy)
    if new == old:
        return None
    way = "shorter" if new < old else "longer"
    return (
        f"next scheduled check-in after {plural(new, 'more day', 'more days')}, {way} than "
        f"{old}: {why}"
    )


_YEAR = re.compile(r"(?<![\d.,])(1[89]\d\d|2\d\d\d)(?![\d.,]\d)")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})([-./])(\d{1,2})\2(\d{1,2})(?!\d)")


def mentions_later_date(text: str, external: dt.date) -> str | None:
    """The first date or year in ``text`` after ``external``, or None."""
    for match in _ISO_DATE.finditer(text):
        try:
            when = dt.date(int(match[1]), int(match[3]), int(match[4]))
        except ValueError:
            continue
        if when > external:
            return match[0]
    for match in _YEAR.finditer(text):
        if int(match[1]) > external.year:
            return match[1]
    return None


def future_leak(store: Store, run_id: str, day_index: int) -> str | None:
    """Why the day's entries look like they know the future, or None."""
    for entry, _idx, _status in store.list_entries(run_id, day_index=day_index):
        found = mentions_later_date(f"{entry.title} {entry.body}", entry.external_date)
        if found:
            return f"entry #{entry.seq} mentions {found}, after {entry.external_date}"
    return None


def charter_similarity(store: Store, run_id: str, spec: RunSpec, first: int, last: int) -> float:
    """Mean similarity to the charter of committed days ``first..last``' entries."""
    charter = " ".join([spec.charter.agenda, *spec.charter.open_questions])
    by_day: dict[int, list[str]] = {}
    for e, index, status in store.list_entries(run_id, day_range=(first, last)):
        if status == "committed" and index is not None:
            by_day.setdefault(index, []).append(f"{e.title} {e.body}")
    scores = [drift.lexical_similarity(charter, " ".join(texts)) for texts in by_day.values()]
    return sum(scores) / len(scores) if scores else 0.0


def charter_drift(
    store: Store, run_id: str, spec: RunSpec, latest: int, approved_day: int
) -> str | None:
    """Why the latest days look off-charter, or None: the mean similarity of the last
    window fell by ``charter_drift_drop`` against the window ending at ``approved_day``
    (the last approval), or the first window."""
    policy = spec.checkins
    if policy.charter_drift_drop is None:
        return None
    window = policy.charter_drift_window
    anchor = approved_day or window
    if latest - anchor < window:
        return None
    before = charter_similarity(store, run_id, spec, max(1, anchor - window + 1), anchor)
    recent = charter_similarity(store, run_id, spec, latest - window + 1, latest)
    if before > 0 and recent < before * (1 - policy.charter_drift_drop):
        return f"charter similarity fell from {before:.2f} to {recent:.2f}"
    return None


def due(
    store: Store, run: Run, spec: RunSpec, now: dt.datetime | None = None
) -> CheckinReason | None:
    """The reason a check-in is due now, or None. Pure in the run's stored state (and the
    wall clock, for a ``wall_clock`` time budget)."""
    checkins = store.list_checkins(run.id)
    last = checkins[-1] if checkins else None
    if last is not None and last.decision is None:
        return None  # one is already open
    approved = approving(checkins)
    approved_day = approved[-1].last_day_index if approved else 0
    since = last.last_day_index if last is not None else 0
    policy = spec.checkins
    interval = adaptive_interval([c.drift_score for c in checkins], policy)
    new_days = store.committed_days_after(run.id, since)
    if new_days == 0:
        return None
    latest = store.last_committed_day(run.id)
    if policy.future_leak and future_leak(store, run.id, latest):
        return CheckinReason.FUTURE_LEAK
    if charter_drift(store, run.id, spec, latest, approved_day):
        return CheckinReason.CHARTER_DRIFT
    if new_days >= interval:
        return CheckinReason.SCHEDULED
    if policy.max_unsupervised_days is not None:
        unsupervised = store.committed_days_after(run.id, approved_day)
        if unsupervised >= policy.max_unsupervised_days:
            return CheckinReason.BUDGET
    if policy.max_external_drift_days is not None:
        today = external_date(
            spec.time,
            run_started=run.created_at,
            now=now or utcnow(),
            approved_checkins=len(approved),
        )
        at_approval = _date_at_last_approval(run, spec, approved)
        if (today - at_approval).days > policy.max_external_drift_days:
            return CheckinReason.BUDGET
    if spot_check_fires(run.secret_seed, latest, policy.spot_check_probability):
        return CheckinReason.SPOT_CHECK
    return None


def _date_at_last_approval(run: Run, spec: RunSpec, approved: Sequence[CheckIn]) -> dt.date:
    if not approved:
        return spec.time.anchor
    last = approved[-1]
    assert last.decided_at is not None
    return external_date(
        spec.time, run_started=run.created_at, now=last.decided_at, approved_checkins=len(approved)
    )


def approved_predictions(store: Store, run_id: str) -> list[tuple[int, str]]:
    """(probe id, prediction) of the last approving check-in, for prediction drift."""
    approved = approving(store.list_checkins(run_id))
    if not approved:
        return []
    return [
        (probe.id, pair.prediction)
        for pair, probe in store.pairs(approved[-1].id)
        if pair.prediction and not pair.prediction.startswith("(no valid prediction")
    ]


def answered_before(store: Store, run_id: str) -> dict[int, str]:
    """The first human answer to each probe, from earlier check-ins."""
    first: dict[int, str] = {}
    for c in store.list_checkins(run_id):
        for pair, probe in store.pairs(c.id):
            if pair.human_answer is not None:
                first.setdefault(probe.id, pair.human_answer)
    return first


def pick_retest(
    run: Run, policy: CheckinPolicy, answered: dict[int, str], chosen: Sequence[int], number: int
) -> int | None:
    """Now and then, one probe the human already answered, to ask again."""
    rng = random.Random(f"{run.secret_seed}:retest:{number}")
    candidates = sorted(set(answered) - set(chosen))
    if not candidates or rng.random() >= policy.retest_probability:
        return None
    return rng.choice(candidates)


def consistency(
    store: Store, run_id: str, similarity: drift.Similarity = drift.lexical_similarity
) -> float | None:
    """Mean similarity of the human's retest answers to their first answers: how much
    they agree with themselves, the ceiling for the simulation's agreement."""
    first: dict[int, str] = {}
    scores: list[float] = []
    for c in store.list_checkins(run_id):
        for pair, probe in store.pairs(c.id):
            if pair.human_answer is None:
                continue
            if pair.is_retest and probe.id in first:
                scores.append(similarity(first[probe.id], pair.human_answer))
            first.setdefault(probe.id, pair.human_answer)
    return sum(scores) / len(scores) if scores else None


def select_probes(run: Run, probes: Sequence[Probe], k: int, number: int) -> list[Probe]:
    if k >= len(probes):
        return list(probes)
    return random.Random(f"{run.secret_seed}:probes:{number}").sample(list(probes), k)


@dataclass(frozen=True)
class Opening:
    """A check-in about to open: why, which days, and the predictions made for it."""

    run_id: str
    reason: CheckinReason
    first_day: int
    last_day: int
    predictions: list[tuple[int, str | None, str | None]]  # probe id, text, error
    detail: str | None = None
    retests: frozenset[int] = frozenset()  # probe ids asked again


def open_checkin(
    db: Database, opening: Opening, fence: Callable[[Store, Run], None] | None = None
) -> int | None:
    """Write the check-in and its predictions and make the run wait. Idempotent: if one is
    already open or the state moved on, nothing is written and None is returned. A
    ``fence`` (a service's lease check) may refuse the write by raising."""
    with db.write() as session:
        store = Store(session)
        run = store.get_run(opening.run_id, lock=True)
        if fence is not None:
            fence(store, run)
        spec = RunSpec.model_validate(run.spec)
        if run.status != RunStatus.RUNNING:
            return None
        last = store.last_checkin(run.id)
        if last is not None and last.decision is None:
            return None
        if opening.reason != CheckinReason.PREDICTION_DRIFT and (
            due(store, run, spec) != opening.reason
        ):
            return None
        if store.last_committed_day(run.id) != opening.last_day:
            return None
        checkin = store.add_checkin(
            run.id,
            opening.reason,
            first_day=opening.first_day,
            last_day=opening.last_day,
            detail=opening.detail,
            predictions=[
                (
                    probe_id,
                    text if text is not None else f"(no valid prediction: {error})",
                    probe_id in opening.retests,
                )
                for probe_id, text, error in opening.predictions
            ],
        )
        store.set_status(
            run, RunStatus.AWAITING_CHECKIN, f"check-in {checkin.id} ({opening.reason})"
        )
        return checkin.id


def record_answer(db: Database, pair_id: int, answer: str) -> None:
    """Store the human's blind answer. Refused once the prediction has been revealed."""
    answer = answer.strip()
    if not answer:
        raise SpecError("an answer cannot be empty")
    with db.write() as session:
        store = Store(session)
        pair = store.get_pair(pair_id)
        if pair is None:
            raise SpecError(f"no probe pair {pair_id}")
        _require_open(store.get_checkin(pair.checkin_id))
        if pair.revealed_at is not None:
            raise InvalidState("the prediction was already shown; the blind answer is closed")
        if pair.answered_at is not None:
            raise InvalidState("this probe already has a stored answer; it is never overwritten")
        store.answer_pair(pair, answer, utcnow())


def reveal(
    db: Database, pair_id: int, similarity: drift.Similarity = drift.lexical_similarity
) -> str:
    """The prediction, only after the blind answer is stored; marks it revealed."""
    with db.write() as session:
        store = Store(session)
        pair = store.get_pair(pair_id)
        if pair is None:
            raise SpecError(f"no probe pair {pair_id}")
        if pair.answered_at is None:
            raise InvalidState("answer the probe before its prediction is shown")
        if pair.revealed_at is None:
            store.reveal_pair(
                pair, similarity(pair.prediction or "", pair.human_answer or ""), utcnow()
            )
        return pair.prediction or ""


def rate(db: Database, pair_id: int, rating: int) -> None:
    if not 1 <= rating <= 5:
        raise SpecError("a rating is a whole number from 1 to 5")
    with db.write() as session:
        store = Store(session)
        pair = store.get_pair(pair_id)
        if pair is None or pair.revealed_at is None:
            raise InvalidState("rate a prediction only after it is revealed")
        _require_open(store.get_checkin(pair.checkin_id))
        if pair.rating is not None:
            raise InvalidState(
                "this prediction already has a stored rating; it is never overwritten"
            )
        store.rate_pair(pair, rating)


def _require_open(checkin: CheckIn) -> None:
    if checkin.decision is not None:
        when = checkin.decided_at.isoformat() if checkin.decided_at else "earlier"
        raise InvalidState(
            f"check-in {checkin.id} was already decided ({checkin.decision}, {when}); "
            "nothing changed"
        )


_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
_KEY = re.compile(r"#?[0-9]{1,9}")

Answers = dict[int | str, dict[str, Any]]
"""Answers to a check-in's probes. An ``int`` key is a probe id (the Python API); a ``str``
key is an answers-file key, read by :func:`resolve_answers`."""


def load_answers(path: Path) -> dict[int | str, dict[str, Any]]:
    """``{"<key>": {"answer": "...", "rating": 4}}`` from a JSON file. A key is a probe's
    position in the check-in (``"1"``) or its id (``"#7"``); :func:`resolve_answers` maps
    them onto the check-in's probes."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected an object of probe keys to answers")
    out: dict[int | str, dict[str, Any]] = {}
    for key, value in raw.items():
        if not _KEY.fullmatch(str(key)) or not isinstance(value, dict):
            raise SpecError(
                f'{path}: {key!r}: expected a probe position ("1") or id ("#7") '
                "and {answer, rating}"
            )
        answer, rating = value.get("answer"), value.get("rating")
        if not isinstance(answer, str) or not answer.strip():
            raise SpecError(f"{path}: {key}: answer must be non-empty text")
        if _NOT_TEXT.search(answer):  # JSON can spell both; no database stores them
            raise SpecError(f"{path}: {key}: answer holds a NUL or half a surrogate pair")
        if rating is not None and (
            isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5
        ):
            raise SpecError(f"{path}: {key}: rating must be a whole number from 1 to 5")
        out[str(key)] = {"answer": answer.strip(), "rating": rating}
    return out


def expected_keys(pairs: Sequence[tuple[ProbePair, Probe]]) -> str:
    """The keys an answers file may use for these pairs, for an error message."""
    if not pairs:
        return "none (this check-in has no probes)"
    ids = ", ".join(f'"#{probe.id}"' for _, probe in pairs)
    last = len(pairs)
    positions = '"1"' if last == 1 else f'"1" to "{last}"'
    return f"{positions} (positions, as the review numbers them) or {ids} (probe ids)"


def resolve_answers(
    pairs: Sequence[tuple[ProbePair, Probe]], answers: Answers, source: str = "answers"
) -> dict[int, dict[str, Any]]:
    """Map answer keys onto the check-in's pairs: ``{pair id: given}``, or refuse.

    The rule: ``"#7"`` is probe id 7; a bare ``"2"`` is the second probe of the check-in
    (``probe 2 of 3`` on the review screen) or probe id 2; a bare number that means two
    different probes is refused, never guessed. An ``int`` key is a probe id. A key that
    names no probe of the check-in, two keys for one probe, or an answer to a probe that
    already has a stored one is refused too: nothing is ever dropped silently."""
    by_id = {probe.id: pair for pair, probe in pairs}
    numbered = {str(n): pair for n, (pair, _probe) in enumerate(pairs, 1)}
    position = {pair.id: n for n, (pair, _probe) in enumerate(pairs, 1)}
    expected = f"expected {expected_keys(pairs)}; nothing changed"
    out: dict[int, dict[str, Any]] = {}
    for key, given in answers.items():
        if isinstance(key, int):
            pair = by_id.get(key)
            shown = f"#{key}"
        else:
            shown = key
            if key.startswith("#"):
                pair = by_id.get(int(key[1:]))
            else:
                as_position, as_id = numbered.get(key), by_id.get(int(key))
                if as_position and as_id and as_position.id != as_id.id:
                    raise SpecError(
                        f'{source}: key "{key}" could be probe {key} of {len(pairs)} '
                        f"(#{as_position.probe_id}) or probe id #{key} (probe "
                        f'{position[as_id.id]} of {len(pairs)}); write "#{as_position.probe_id}" '
                        f'or "#{key}"; nothing changed'
                    )
                pair = as_position or as_id
        if pair is None:
            raise SpecError(f'{source}: key "{shown}" names no probe of this check-in; {expected}')
        if pair.id in out:
            raise SpecError(
                f'{source}: key "{shown}" names probe {position[pair.id]} of {len(pairs)} '
                f"(#{pair.probe_id}) again; nothing changed"
            )
        if pair.answered_at is not None:
            raise SpecError(
                f'{source}: key "{shown}": probe {position[pair.id]} of {len(pairs)} '
                f"(#{pair.probe_id}) already has a stored answer, which is never overwritten; "
                "leave it out of the file; nothing changed"
            )
        out[pair.id] = given
    return out


def unanswered(pairs: Sequence[tuple[ProbePair, Probe]]) -> list[int]:
    """Positions (1-based, as the review numbers them) of pairs with no stored answer."""
    return [n for n, (pair, _probe) in enumerate(pairs, 1) if pair.human_answer is None]


@dataclass(frozen=True)
class Outcome:
    checkin_id: int
    decision: Decision
    drift: drift.DriftLevel
    reverted_days: int
    agreement: float | None  # mean agreement at this check-in
    ceiling: float | None  # the human's own consistency over all retests so far
    schedule: str | None = None  # how the adaptive interval changed, if it did


def decide(
    db: Database,
    checkin_id: int,
    decision: Decision,
    *,
    note: str | None = None,
    answers: Answers | None = None,
    similarity: drift.Similarity = drift.lexical_similarity,
    require_answers: bool = False,
    source: str = "answers",
) -> Outcome:
    """Apply a decision once. Answers from a file are stored first, blind, as if typed;
    keys that match no probe are refused (:func:`resolve_answers`). With
    ``require_answers``, approve and amend are refused while a probe has no answer."""
    if decision == Decision.AMEND and not (note and note.strip()):
        raise SpecError("--amend needs --note with the correction")
    with db.write() as session:
        store = Store(session)
        checkin = store.get_checkin(checkin_id)
        run = store.get_run(checkin.run_id, lock=True)
        _require_open(checkin)
        spec = RunSpec.model_validate(run.spec)
        now = utcnow()
        pairs = store.pairs(checkin.id)
        resolved = resolve_answers(pairs, answers or {}, source)
        for pair, _probe in pairs:
            given = resolved.get(pair.id)
            if given:
                store.answer_pair(pair, given["answer"], now)
                store.reveal_pair(pair, similarity(pair.prediction or "", given["answer"]), now)
                store.rate_pair(pair, given["rating"])
        missing = unanswered(pairs)
        if require_answers and decision in APPROVING and missing:
            shown = ", ".join(str(n) for n in missing)
            which = (
                f"probe {shown} of {len(pairs)} has"
                if len(missing) == 1
                else (f"probes {shown} of {len(pairs)} have")
            )
            raise SpecError(
                f"check-in {checkin.id}: {which} no answer; "
                f"answer in `loopsim checkin review {checkin.id}` or with --answers, or "
                f"pass --skip-probes to {decision} without; nothing changed"
            )
        agreements = [
            drift.agreement(p.similarity, p.rating) for p, _ in pairs if p.similarity is not None
        ]
        score = drift.drift_score(agreements)
        # Once only, even against a racing writer: the update matches an undecided row.
        if not store.claim_decision(
            checkin.id, decision=decision, note=note, decided_at=now, drift_score=score
        ):
            raise InvalidState(f"check-in {checkin.id} was already decided; nothing changed")
        reverted = 0
        if decision == Decision.HALT:
            store.set_status(run, RunStatus.HALTED, f"halted at check-in {checkin.id}")
        else:
            if decision == Decision.AMEND:
                date = checkin_date(store, run, spec)
                store.append_entries(
                    run.id,
                    [
                        EntryInput(
                            EntryKind.CORRECTION,
                            f"Correction at check-in {checkin.id}",
                            (note or "").strip(),
                            author=Author.HUMAN,
                        )
                    ],
                    day=None,
                    external_date=date,
                )
            if decision == Decision.REJECT:
                reverted = store.revert_days(
                    run.id, last_approved_day(store, run.id), checkin.last_day_index
                )
            store.set_status(run, RunStatus.RUNNING)
        decided = store.list_checkins(run.id)
        history = [c.drift_score for c in decided if c.drift_score is not None]
        before = [c.drift_score for c in decided if c.id != checkin.id]
        schedule = schedule_change(before, [c.drift_score for c in decided], spec.checkins)
        level = drift.classify(
            score, drift.ewma(history), spec.checkins.drift_warn, spec.checkins.drift_alarm
        )
        mean = sum(agreements) / len(agreements) if agreements else None
        ceiling = consistency(store, run.id, similarity)
        if decision == Decision.HALT:
            schedule = None  # no next check-in for a halted run
        return Outcome(checkin.id, decision, level, reverted, mean, ceiling, schedule)


def checkin_date(store: Store, run: Run, spec: RunSpec) -> dt.date:
    return external_date(
        spec.time,
        run_started=run.created_at,
        now=utcnow(),
        approved_checkins=approved_count(store, run.id),
    )
