"""What a human decides at a check-in: approve, amend, reject or halt.

:func:`decide` applies a decision once: a second decision is refused, even against a
racing writer. Answers given with it are stored first, blind, as if typed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from loopsim.checkin import drift
from loopsim.checkin.answers import Answers, consistency, require_open, resolve_answers, unanswered
from loopsim.checkin.schedule import APPROVING, approved_count, last_approved_day, schedule_change
from loopsim.clock import external_date
from loopsim.errors import InvalidState, SpecError
from loopsim.record.db import Database
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import Run, utcnow
from loopsim.schemas import Author, Decision, EntryKind, RunSpec, RunStatus


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
        require_open(checkin)
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
