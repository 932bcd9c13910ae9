"""When the loop stops for a human: the schedule of check-ins and the alarms that call
one early.

Nothing here is visible to a day's researcher: nothing under ``loopsim/researcher/``
imports this package, and the schedule, the spot-check seed and the counts never enter a
prompt.

- :func:`due` says whether a check-in is due now, from the run's state alone, so it gives
  the same answer after a crash and restart.
- Spot checks draw from an RNG seeded with the run's secret seed and the day index: the
  model cannot predict them, and a replay gives the same schedule.
- The adaptive interval shortens after a drift alarm and lengthens after calm check-ins;
  a future leak or charter drift calls a check-in at once.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Sequence
from typing import TypeVar

from loopsim.checkin import drift
from loopsim.checkin.dates import later_date
from loopsim.clock import external_date
from loopsim.record.store import CheckinRow, EntryText, Store
from loopsim.record.tables import CheckIn, Run, utcnow
from loopsim.schemas import CheckinPolicy, CheckinReason, Decision, RunSpec
from loopsim.text import plural

APPROVING = (Decision.APPROVE, Decision.AMEND)
# A check-in as an ORM object, or as the plain row the daily test reads.
C = TypeVar("C", CheckIn, CheckinRow)


def spot_check_fires(secret_seed: str, day_index: int, probability: float) -> bool:
    """A draw the model cannot predict: seeded by a secret it never sees."""
    return random.Random(f"{secret_seed}:spot:{day_index}").random() < probability


def approving(checkins: Sequence[C]) -> list[C]:
    return [c for c in checkins if c.decision in APPROVING]


def approved_count(store: Store, run_id: str) -> int:
    return store.count_checkins(run_id, [d.value for d in APPROVING])


def last_approved_day(store: Store, run_id: str) -> int:
    approved = approving(store.checkin_rows(run_id))
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
                # Up to the cap, never below the interval: with every_days above
                # max_interval_days, good scores must not bring check-ins closer.
                longer = max(interval, min(policy.max_interval_days, math.ceil(interval * 1.5)))
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


def mentions_later_date(text: str, external: dt.date) -> str | None:
    """The first date in ``text`` after ``external``, as written, or None. Dates, not
    numbers: "2048 latents" is no year (see :mod:`loopsim.checkin.dates`)."""
    return later_date(text, external)


def future_leak(
    store: Store, run_id: str, day_index: int, texts: Sequence[EntryText] | None = None
) -> str | None:
    """Why the day's entries look like they know the future, or None. ``texts``: entry
    texts of a day range that includes the day, if the caller has read them."""
    if texts is None:
        texts = store.entry_texts(run_id, (day_index, day_index))
    for entry in (e for e in texts if e.day_index == day_index):
        found = mentions_later_date(f"{entry.title} {entry.body}", entry.external_date)
        if found:
            return f"entry #{entry.seq} mentions {found}, after {entry.external_date}"
    return None


def charter_similarity(
    store: Store,
    run_id: str,
    spec: RunSpec,
    first: int,
    last: int,
    similarity: drift.Similarity = drift.lexical_similarity,
    texts: Sequence[EntryText] | None = None,
) -> float:
    """Mean similarity to the charter of committed days ``first..last``' entries (of
    ``texts``, entry texts of a range that includes those days, if given)."""
    charter = " ".join([spec.charter.agenda, *spec.charter.open_questions])
    by_day: dict[int, list[str]] = {}
    if texts is None:
        texts = store.entry_texts(run_id, (first, last))
    for e in texts:
        if e.status == "committed" and e.day_index is not None and first <= e.day_index <= last:
            by_day.setdefault(e.day_index, []).append(f"{e.title} {e.body}")
    scores = [similarity(charter, " ".join(day)) for day in by_day.values()]
    return sum(scores) / len(scores) if scores else 0.0


def charter_anchor(approved: Sequence[CheckIn | CheckinRow], latest: int, window: int) -> int:
    """The approved day charter drift compares against: the last approval that leaves a
    whole window of days after it. With check-ins every day the last approval is always
    yesterday, and comparing against it would never leave a window to compare (so the
    alarm could never fire); an earlier approval is still an approved baseline."""
    return max(
        (c.last_day_index for c in approved if c.last_day_index <= latest - window), default=0
    )


def charter_drift(
    store: Store,
    run_id: str,
    spec: RunSpec,
    latest: int,
    approved_day: int,
    similarity: drift.Similarity = drift.lexical_similarity,
    recent: Sequence[EntryText] | None = None,
) -> str | None:
    """Why the latest days look off-charter, or None: the mean similarity of the last
    window fell by ``charter_drift_drop`` against the window ending at ``approved_day``
    (the last approval), or the first window. ``recent``: the last window's entry texts,
    if the caller has read them."""
    policy = spec.checkins
    if policy.charter_drift_drop is None:
        return None
    window = policy.charter_drift_window
    anchor = approved_day or window
    if latest - anchor < window:
        return None
    before = charter_similarity(
        store, run_id, spec, max(1, anchor - window + 1), anchor, similarity
    )
    first = latest - window + 1
    recent_mean = charter_similarity(store, run_id, spec, first, latest, similarity, recent)
    if before > 0 and recent_mean < before * (1 - policy.charter_drift_drop):
        return f"charter similarity fell from {before:.2f} to {recent_mean:.2f}"
    return None


def explain(
    store: Store,
    run: Run,
    spec: RunSpec,
    reason: CheckinReason,
    similarity: drift.Similarity = drift.lexical_similarity,
) -> str | None:
    """What raised an alarm, in words, to store with the check-in it opened: the phrase
    that leaked a later date, or the charter similarities that fell."""
    latest = store.last_committed_day(run.id)
    if reason == CheckinReason.FUTURE_LEAK:
        return future_leak(store, run.id, latest)
    if reason == CheckinReason.BUDGET and budget_spent(store, run.id, spec, latest):
        return f"the day budget of {spec.budget.days} is spent: a last look before it completes"
    if reason == CheckinReason.CHARTER_DRIFT:
        approved = approving(store.checkin_rows(run.id))
        anchor = charter_anchor(approved, latest, spec.checkins.charter_drift_window)
        return charter_drift(store, run.id, spec, latest, anchor, similarity)
    return None


def due(
    store: Store,
    run: Run,
    spec: RunSpec,
    now: dt.datetime | None = None,
    similarity: drift.Similarity = drift.lexical_similarity,
    checkins: Sequence[CheckinRow] | None = None,
    latest: int | None = None,
) -> CheckinReason | None:
    """The reason a check-in is due now, or None. Pure in the run's stored state (and the
    wall clock, for a ``wall_clock`` time budget). ``similarity`` measures charter drift;
    an embedder caches its vectors, so asking twice (before and inside the write that
    opens the check-in) embeds once. ``checkins``: the run's check-ins in order, if the
    caller has read them in this transaction; ``latest``, the run's last committed day,
    likewise."""
    if checkins is None:
        checkins = store.checkin_rows(run.id)
    last = checkins[-1] if checkins else None
    if last is not None and last.decision is None:
        return None  # one is already open
    approved = approving(checkins)
    approved_day = approved[-1].last_day_index if approved else 0
    since = last.last_day_index if last is not None else 0
    policy = spec.checkins
    interval = adaptive_interval([c.drift_score for c in checkins], policy)
    if latest is None:
        latest = store.last_committed_day(run.id)
    # No committed day sits past the last one: it bounds the count as the next index would.
    new_days = store.committed_days_after(run.id, since, next_index=latest + 1)
    if new_days == 0:
        return None
    # One read of the last days serves the leak test (the last day) and charter drift's
    # recent window (the last window of days) alike.
    window = policy.charter_drift_window if policy.charter_drift_drop is not None else 1
    reads = policy.future_leak or policy.charter_drift_drop is not None
    recent = store.entry_texts(run.id, (max(1, latest - window + 1), latest)) if reads else []
    if policy.future_leak and future_leak(store, run.id, latest, recent):
        return CheckinReason.FUTURE_LEAK
    anchor = charter_anchor(approved, latest, policy.charter_drift_window)
    if charter_drift(store, run.id, spec, latest, anchor, similarity, recent):
        return CheckinReason.CHARTER_DRIFT
    if new_days >= interval:
        return CheckinReason.SCHEDULED
    if policy.final and budget_spent(store, run.id, spec, latest):
        return CheckinReason.BUDGET
    if policy.max_unsupervised_days is not None:
        unsupervised = store.committed_days_after(run.id, approved_day, next_index=latest + 1)
        if unsupervised >= policy.max_unsupervised_days:
            return CheckinReason.BUDGET
    if policy.max_external_drift_days is not None:
        today = external_date(
            spec.time,
            run_started=run.created_at,
            now=now or utcnow(),
            approved_checkins=len(approved),
        )
        at_approval = _date_at_last_approval(store, run, spec, approved)
        if (today - at_approval).days > policy.max_external_drift_days:
            return CheckinReason.BUDGET
    if spot_check_fires(run.secret_seed, latest, policy.spot_check_probability):
        return CheckinReason.SPOT_CHECK
    return None


def budget_spent(store: Store, run_id: str, spec: RunSpec, latest: int) -> bool:
    """Whether the run's committed days fill its day budget (``latest``: its last
    committed day, which bounds their count, so most days need no read)."""
    if latest < spec.budget.days:
        return False
    return store.committed_days_after(run_id, 0, next_index=latest + 1) >= spec.budget.days


def _date_at_last_approval(
    store: Store, run: Run, spec: RunSpec, approved: Sequence[CheckinRow]
) -> dt.date:
    if not approved:
        return spec.time.anchor
    decided = store.get_checkin(approved[-1].id).decided_at  # the rows leave it out
    assert decided is not None
    return external_date(
        spec.time, run_started=run.created_at, now=decided, approved_checkins=len(approved)
    )
