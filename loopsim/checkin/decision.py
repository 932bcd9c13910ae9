"""What a human decides at a check-in: approve, amend, reject or halt.

:func:`decide` applies a decision once: a second decision is refused, even against a
racing writer. Answers given with it are stored first, blind, as if typed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from loopsim.checkin import drift
from loopsim.checkin.answers import Answers, require_open, resolve_answers
from loopsim.checkin.schedule import APPROVING, approved_count, last_approved_day, schedule_change
from loopsim.checkin.scoring import CheckinScore, score_checkin
from loopsim.clock import external_date
from loopsim.errors import InvalidState, SpecError
from loopsim.record.db import Database
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import Probe, Run, utcnow
from loopsim.schemas import Author, Decision, EntryKind, RunSpec, RunStatus

if TYPE_CHECKING:
    from loopsim.checkin.judge import Judged


@dataclass(frozen=True)
class Outcome:
    checkin_id: int
    decision: Decision
    drift: drift.DriftLevel
    reverted_days: int
    agreement: float | None  # mean agreement at this check-in
    ceiling: float | None  # the human's own consistency over all retests so far
    schedule: str | None = None  # how the adaptive interval changed, if it did
    score: CheckinScore | None = None  # per pair: raw, calibrated, rating, judge


# A judge: (probe, human answer, prediction) to a verdict; see checkin/judge.py, which is
# imported only where a judge is built (it brings in the model seam).
Judge = Callable[[Probe, str, str], "Judged"]


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
    judge: Judge | None = None,
) -> Outcome:
    """Apply a decision once. Answers from a file are stored first, blind, as if typed;
    keys that match no probe are refused (:func:`resolve_answers`). With
    ``require_answers``, approve and amend are refused while a probe has no answer.

    Two steps: the answers are checked and the check-in scored in a read transaction
    (a similarity may be a sentence embedder, a judge a model call: neither may hold the
    write lock), then the answers, figures and decision are written in one transaction,
    which refuses if the check-in changed in between."""
    if decision == Decision.AMEND and not (note and note.strip()):
        raise SpecError("--amend needs --note with the correction")
    with db.read() as session:
        store = Store(session)
        checkin = store.get_checkin(checkin_id)
        require_open(checkin)
        pairs = store.pairs(checkin.id)
        resolved = resolve_answers(pairs, answers or {}, source)
        missing = [
            n
            for n, (pair, _probe) in enumerate(pairs, 1)
            if pair.human_answer is None and pair.id not in resolved
        ]
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
        seen = {pair.id: pair.human_answer for pair, _probe in pairs}
        score = score_checkin(
            store,
            checkin.id,
            similarity,
            answers={pid: given["answer"] for pid, given in resolved.items()},
            ratings={pid: given.get("rating") for pid, given in resolved.items()},
            judge=judge,
        )
    with db.write() as session:
        store = Store(session)
        checkin = store.get_checkin(checkin_id)
        run = store.get_run(checkin.run_id, lock=True)
        require_open(checkin)
        spec = RunSpec.model_validate(run.spec)
        now = utcnow()
        pairs = store.pairs(checkin.id)
        if {pair.id: pair.human_answer for pair, _probe in pairs} != seen:
            raise InvalidState(
                f"check-in {checkin.id} changed while it was being scored (an answer was "
                "stored meanwhile); nothing changed, decide again"
            )
        by_pair = {p.pair_id: p for p in score.pairs}
        for pair, _probe in pairs:
            given = resolved.get(pair.id)
            if given:
                store.answer_pair(pair, given["answer"], now)
                store.reveal_pair(pair, by_pair[pair.id].similarity, now)
                store.rate_pair(pair, given.get("rating"))
            scored = by_pair[pair.id]
            if scored.similarity is not None:
                store.score_pair(
                    pair,
                    similarity=scored.similarity,
                    agreement=scored.calibrated,
                    null_level=score.levels.null,
                    ceiling=score.levels.ceiling,
                )
            if scored.judged is not None:
                store.judge_pair(
                    pair,
                    scored.judged.rating,
                    scored.judged.reason,
                    [asdict(call) for call in scored.judged.calls],
                )
        value = score.drift
        decided = [c for c in store.list_checkins(run.id) if c.id != checkin.id]
        history = [c.drift_score for c in decided if c.drift_score is not None]
        trend = drift.ewma([*history, value] if value is not None else history)
        if not store.claim_decision(
            checkin.id,
            decision=decision,
            note=note,
            decided_at=now,
            drift_score=value,
            agreement=score.agreement,
            ceiling=score.ceiling_measured,
            trend=trend,
            similarity=score.kind,
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
            if decision != Decision.REJECT and store.committed_days_after(run.id, 0) >= (
                spec.budget.days
            ):  # the check-in after the budget's last day: nothing is left to step
                store.set_status(run, RunStatus.COMPLETED, "day budget spent")
            else:
                store.set_status(run, RunStatus.RUNNING)
        before = [c.drift_score for c in decided]
        schedule = schedule_change(before, [*before, value], spec.checkins)
        level = drift.classify(value, trend, spec.checkins.drift_warn, spec.checkins.drift_alarm)
        if decision == Decision.HALT:
            schedule = None  # no next check-in for a halted run
        return Outcome(
            checkin.id,
            decision,
            level,
            reverted,
            score.agreement,
            score.ceiling_measured,
            schedule,
            score,
        )


def checkin_date(store: Store, run: Run, spec: RunSpec) -> dt.date:
    return external_date(
        spec.time,
        run_started=run.created_at,
        now=utcnow(),
        approved_checkins=approved_count(store, run.id),
    )
