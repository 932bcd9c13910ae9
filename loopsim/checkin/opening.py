"""Opening a check-in: which probes it asks, which it asks again, and the write that
makes the run wait for a human.

Probes are drawn from an RNG seeded with the run's secret seed and the check-in's number,
so a replay asks the same ones. :func:`open_checkin` is idempotent: it writes nothing if a
check-in is already open or the run's state moved on since the opening was planned.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loopsim.chat.handle import ChatHandle
from loopsim.chat.tokens import counter_for
from loopsim.chat.tracing import untraced
from loopsim.checkin import drift
from loopsim.checkin.schedule import approving, due, explain
from loopsim.clock import external_date
from loopsim.record.db import Database
from loopsim.record.store import CheckinRow, Store
from loopsim.record.tables import CheckIn, Probe, Run, utcnow
from loopsim.researcher.conversation import Logged, answer_conversation, drive
from loopsim.researcher.fit import fit_prompt
from loopsim.researcher.prompts import Prompt, build_probe_prompt, echoes
from loopsim.researcher.view import build_view
from loopsim.schemas import CheckinPolicy, CheckinReason, RunSpec, RunStatus

# Stored in place of a prediction the model never gave validly, with the reason after it.
NO_PREDICTION = "(no valid prediction"


def usable(prediction: str | None) -> bool:
    """Whether a stored prediction is one the model gave, not the placeholder."""
    return bool(prediction) and not (prediction or "").startswith(NO_PREDICTION)


def approved_predictions(store: Store, run_id: str) -> list[tuple[int, str]]:
    """(probe id, prediction) of the last approving check-in, for prediction drift."""
    approved = approving(store.checkin_rows(run_id))
    if not approved:
        return []
    return [
        (probe.id, pair.prediction)
        for pair, probe in store.pairs(approved[-1].id)
        if pair.prediction and usable(pair.prediction)
    ]


@dataclass(frozen=True)
class Due:
    """What the test after a committed day found: the reason a check-in is due, or (for
    prediction drift) the approved predictions to ask again, and what it read on the way."""

    checkins: Sequence[CheckinRow]
    last_day: int
    reason: CheckinReason | None
    recheck: list[tuple[int, str]]

    @property
    def first_day(self) -> int:
        return _first_day(self.checkins)


def _first_day(checkins: Sequence[CheckIn | CheckinRow]) -> int:
    """The first day a check-in would cover: the one after the last check-in's."""
    return (checkins[-1].last_day_index if checkins else 0) + 1


def due_now(
    store: Store,
    run: Run,
    spec: RunSpec,
    similarity: drift.Similarity,
    checkins: Sequence[CheckinRow] | None = None,
) -> Due | None:
    """Whether a check-in is to open after the run's last committed day. Reads only,
    calls no model: None, the answer after most days, means nothing is to be done.
    ``checkins``: the run's :meth:`~loopsim.record.store.Store.checkin_rows`, if the
    caller read them in this transaction."""
    if checkins is None:
        checkins = store.checkin_rows(run.id)
    last_day = store.last_committed_day(run.id)
    reason = due(store, run, spec, similarity=similarity, checkins=checkins, latest=last_day)
    if reason is not None:
        return Due(checkins, last_day, reason, [])
    every = spec.checkins.prediction_drift_every
    undecided = bool(checkins) and checkins[-1].decision is None
    if not every or undecided or last_day % every:
        return None
    if last_day < _first_day(checkins):  # no committed day since the last check-in
        return None
    recheck = approved_predictions(store, run.id)
    return Due(checkins, last_day, None, recheck) if recheck else None


def answered_before(store: Store, run_id: str) -> dict[int, str]:
    """The first human answer to each probe, from earlier check-ins (one read: it was a
    read a check-in, hundreds of them at each opening in a long supervised run)."""
    return store.first_answers(run_id)


def pick_retest(
    run: Run, policy: CheckinPolicy, answered: dict[int, str], chosen: Sequence[int], number: int
) -> int | None:
    """Now and then, one probe the human already answered, to ask again."""
    rng = random.Random(f"{run.secret_seed}:retest:{number}")
    candidates = sorted(set(answered) - set(chosen))
    if not candidates or rng.random() >= policy.retest_probability:
        return None
    return rng.choice(candidates)


def select_probes(run: Run, probes: Sequence[Probe], k: int, number: int) -> list[Probe]:
    if k >= len(probes):
        return list(probes)
    return random.Random(f"{run.secret_seed}:probes:{number}").sample(list(probes), k)


@dataclass(frozen=True)
class Asking:
    """What a check-in found due asks the model to predict: one prompt a probe, built in
    the read that found it due, before any model call."""

    due: Due
    reason: CheckinReason | None  # None: prediction drift, decided after the predictions
    detail: str | None
    number: int  # the check-in's number in the run, from 1
    prompts: list[tuple[int, Prompt]]  # probe id, its prediction's prompt
    retests: frozenset[int]  # probe ids asked again


def plan_predictions(
    store: Store,
    run: Run,
    spec: RunSpec,
    found: Due,
    similarity: drift.Similarity,
    *,
    budget: int,
    limit: int | None,
) -> Asking:
    """The probes a check-in found due asks (drawn again for a replay, or the approved ones
    again for a prediction-drift test) and the prompts that ask the model for its
    predictions: ``budget`` tokens of view each, the whole prompt within ``limit``."""
    checkins, reason = found.checkins, found.reason
    detail = explain(store, run, spec, reason, similarity) if reason else None
    number = len(checkins) + 1
    probes = {p.id: p for p in store.list_probes(run.id, "accepted")}
    retests: frozenset[int] = frozenset()
    if found.recheck:
        chosen = [probes[pid] for pid, _ in found.recheck if pid in probes]
    else:
        chosen = select_probes(run, list(probes.values()), spec.checkins.probes_per_checkin, number)
        answered = answered_before(store, run.id)
        if not any(p.id in answered for p in chosen):
            extra = pick_retest(run, spec.checkins, answered, [p.id for p in chosen], number)
            if extra is not None and extra in probes:
                chosen = [*chosen, probes[extra]]
        retests = frozenset(p.id for p in chosen if p.id in answered)
    date = external_date(
        spec.time,
        run_started=run.created_at,
        now=utcnow(),
        approved_checkins=len(approving(checkins)),
    )
    counter = counter_for(run.model)

    def probe_prompt(question: str) -> Callable[[int], tuple[Prompt, int]]:
        def build(room: int) -> tuple[Prompt, int]:
            view = build_view(store, run.id, spec.charter, date, room, counter=counter)
            made = build_probe_prompt(spec.persona, view, date, question, spec.conditional)
            return made, view.tokens

        return build

    prompts = [(p.id, fit_prompt(probe_prompt(p.question), counter, budget, limit)) for p in chosen]
    return Asking(found, reason, detail, number, prompts, retests)


OnPredict = Callable[[int, int, str | None], None]
"""Told before the first prediction and after each: (probes predicted, of, the last one's
error). It may stop the predictions by raising (a service stopping, its lease lost)."""


def predict(
    asking: Asking,
    chat: Callable[[], ChatHandle],
    model_id: str,
    *,
    max_retries: int,
    calls: list[Logged],
    on_predict: OnPredict,
) -> list[tuple[int, str | None, str | None]]:
    """Ask the model for each probe's prediction, one call after another: (probe id,
    text, error) each. ``chat`` is built once, and only if there is a probe. Every call
    made is logged in ``calls``, so a caller stopped part way (by ``on_predict``, or a
    model that stayed down) keeps those made."""
    prompts = asking.prompts
    predictions: list[tuple[int, str | None, str | None]] = []
    on_predict(0, len(prompts), None)
    for task, (probe_id, prompt) in enumerate(prompts, 1):
        handle = chat()
        conversation = answer_conversation(
            prompt,
            salt=asking.number,
            max_retries=max_retries,
            log=calls,
            task=task,
            echo=echoes(model_id),
        )
        with untraced():  # a tracer would show the prediction before the answer
            result = drive(conversation, handle)
        predictions.append((probe_id, result.text, result.error))
        on_predict(task, len(prompts), result.error)
    return predictions


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
    db: Database,
    opening: Opening,
    fence: Callable[[Store, Run], None] | None = None,
    *,
    similarity: drift.Similarity = drift.lexical_similarity,
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
            due(store, run, spec, similarity=similarity) != opening.reason
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
                    text if text is not None else f"{NO_PREDICTION}: {error})",
                    probe_id in opening.retests,
                )
                for probe_id, text, error in opening.predictions
            ],
        )
        store.set_status(
            run, RunStatus.AWAITING_CHECKIN, f"check-in {checkin.id} ({opening.reason})"
        )
        return checkin.id
