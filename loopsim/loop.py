"""Orchestrates the days of one run.

One day, in three transactions that never overlap the model call:

1. read: check the run may step, pick the next day index, build the view and the prompt;
2. the model call, outside any transaction (it can take minutes);
3. write (``BEGIN IMMEDIATE``): re-check the index is still free, then insert the day,
   its entries and their hash chain, all at once or not at all.

Before planning a day the run's chain is verified (:meth:`Loop.check_chain`), whole once
per process, then only the entries written since: a record failing verification is not stepped.

A process killed anywhere leaves either the whole day or nothing. A second process that
raced to the same index gets :class:`ConcurrentWrite` and writes nothing. A service passes
a *fence* (:mod:`loopsim.record.leases`) that every write checks with the run row locked, so a
worker whose lease was lost writes nothing either.

A failed day (an invalid reply, or an endpoint that stayed down through every retry) is
recorded with its reason and the run goes on; after ``max_failed_days`` failures in a row
the run is marked ``failed``, and ``loopsim run resume`` puts it back with the streak
started afresh: only failed days after the resume count toward failing it again.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Sequence
from typing import TypeVar

from loopsim.chat.handle import ChatFactory, ChatHandle
from loopsim.chat.tokens import counter_for, prompt_limit
from loopsim.chat.tracing import day_trace, traced
from loopsim.checkin import drift
from loopsim.checkin.opening import (
    OnPredict,
    Opening,
    due_now,
    open_checkin,
    plan_predictions,
    predict,
)
from loopsim.checkin.schedule import approved_count, approving
from loopsim.clock import external_date
from loopsim.config import Settings
from loopsim.errors import ConcurrentWrite, Interrupted, InvalidState, ModelUnavailable
from loopsim.record.chain import VerifiedHeads
from loopsim.record.db import Database
from loopsim.record.leases import Fence, live_holder, stepped_by_cli, take_for_cli
from loopsim.record.store import CheckinRow, Store
from loopsim.record.tables import Run, utcnow
from loopsim.researcher.conversation import (
    Conversation,
    DayOutcome,
    Logged,
    Researcher,
    drive,
)
from loopsim.researcher.day import (
    DayResult,
    PlannedDay,
    day_conversation,
    day_summary,
    plan_digests,
    unreachable,
)
from loopsim.researcher.fit import fit_prompt
from loopsim.researcher.prompts import Prompt, build_prompt, shape_held
from loopsim.researcher.view import build_view
from loopsim.schemas import CheckinReason, DayStatus, RunSpec, RunStatus
from loopsim.specs import SpecCache

T = TypeVar("T")
STEPPABLE = {RunStatus.CREATED, RunStatus.RUNNING}
CLI_WORKER = "cli"


class Turn(enum.Enum):
    """What :meth:`Loop.next_day` finds instead of a day to step."""

    CHECKIN_DUE = "a check-in is due"


def refuse_unless_steppable(run: Run) -> None:
    if run.status in STEPPABLE:
        return
    hints: dict[str, str] = {
        RunStatus.PAUSED: f"; `loopsim run resume {run.id}` continues it",
        RunStatus.AWAITING_CHECKIN: "; `loopsim checkin list --pending` shows the check-in",
        RunStatus.FAILED: f"; `loopsim run resume {run.id}` retries it",
    }
    reason = f" ({run.status_reason})" if run.status_reason else ""
    raise InvalidState(f"run {run.id} is {run.status}{reason}{hints.get(run.status, '')}")


class Loop:
    """Steps runs day by day against one database with one chat factory."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        chat_factory: ChatFactory,
        similarity: drift.Similarity = drift.lexical_similarity,
        on_predict: OnPredict = lambda *_: None,
    ) -> None:
        self.on_predict = on_predict  # (probes predicted, of, the last one's error): progress
        self.db = db
        self.settings = settings
        self.chat_factory = chat_factory
        self.similarity = similarity
        self._handles: dict[str, ChatHandle] = {}
        self.opened_checkin: int | None = None
        # A run's chain is read whole once per process, then only what came after.
        self.chains = VerifiedHeads()
        self._names: dict[str, str] = {}  # run id -> name, for naming its traces
        self.spec_of = SpecCache()  # a run's spec, validated again only once it changes

    def check_chain(self, store: Store, run_id: str) -> None:
        """Refuse to step a run whose record fails verification: its entries would go
        into the prompt, and new ones would be chained onto a broken record."""
        self.chains.check(store, run_id)

    def _chat(self, model_id: str, spec: RunSpec) -> ChatHandle:
        # Reusing the loaded weights is not memory: every call gets only its own prompt.
        if model_id not in self._handles:
            self._handles[model_id] = self.chat_factory(
                model_id, spec.model, spec.budget.output_tokens_per_day
            )
        return self._handles[model_id]

    def _prompt_limit(self, model_id: str, spec: RunSpec) -> int | None:
        """The most tokens one prompt to this model may take, where its context is known."""
        return prompt_limit(model_id, self.settings.llama_ctx, spec.budget.output_tokens_per_day)

    def plan(self, run_ref: str, now: dt.datetime | None = None) -> PlannedDay | None:
        """Read-only: the next day's index, date and prompt, or None if the budget is spent."""
        with self.db.read() as session:
            store = Store(session)
            return self._plan(store, store.get_run(run_ref), now or utcnow())

    def next_day(self, run_ref: str) -> PlannedDay | Turn | None:
        """:meth:`checkin_due`, then, if none is due, :meth:`plan`, in one read: what a
        worker asks before each day (one session and one read of the run, not two)."""
        with self.db.read() as session:
            store = Store(session)
            run = store.get_run(run_ref)
            checkins = store.checkin_rows(run.id)  # the test's, and the approved count's
            if self._due(store, run, checkins):
                return Turn.CHECKIN_DUE
            return self._plan(store, run, utcnow(), len(approving(checkins)))

    def _plan(
        self, store: Store, run: Run, now: dt.datetime, approved: int | None = None
    ) -> PlannedDay | None:
        refuse_unless_steppable(run)
        self.check_chain(store, run.id)
        self._names[run.id] = run.name
        spec = self.spec_of(run)
        index = store.next_day_index(run.id)
        if (done := store.committed_days_after(run.id, 0, next_index=index)) >= spec.budget.days:
            return None
        date = external_date(
            spec.time,
            run_started=run.created_at,
            now=now,
            approved_checkins=approved_count(store, run.id) if approved is None else approved,
        )
        # One read of the digests serves both the view and the digests due today.
        state = store.digest_state(run.id, date)
        counter = counter_for(run.model)
        breadth = spec.subquestions.breadth if spec.subquestions.depth else 0
        form = spec.model.response_format or self.settings.response_format
        # The run's model is fixed, so equal records still give byte-equal prompts.

        def day_prompt(budget: int) -> tuple[Prompt, int]:
            view = build_view(
                store, run.id, spec.charter, date, budget, digests_now=state, counter=counter
            )
            made = build_prompt(
                spec.persona,
                view,
                date,
                subquestions=breadth,
                ideas=spec.babble.ideas,
                example=not shape_held(run.model, form),
                conditional=spec.conditional,
            )
            return made, view.tokens

        limit = self._prompt_limit(run.model, spec)
        prompt = fit_prompt(day_prompt, counter, self.settings.view_token_budget, limit)
        digests = plan_digests(store, run.id, index, date, spec.digests.every_days, state)
        tries = store.count_days(run.id, DayStatus.FAILED, index=index)
        return PlannedDay(
            run.id, index, date, prompt, run.model, spec, tuple(digests), limit, tries, done
        )

    def researcher(self, planned: PlannedDay) -> Researcher:
        return Researcher(
            self._chat(planned.model_id, planned.spec),
            max_retries=self.settings.max_retries,
            max_output_chars=self.settings.max_output_chars,
        )

    def conversation(self, planned: PlannedDay) -> Conversation[DayOutcome]:
        """The day's whole conversation: report, ideas, sub-questions and digests, traced
        as one day when a tracer listens (loopsim/chat/tracing.py)."""
        conversation = day_conversation(
            planned,
            version=self._chat(planned.model_id, planned.spec).version,
            max_retries=self.settings.max_retries,
            max_chars=self.settings.max_output_chars,
            digest_budget=self.settings.view_token_budget,
        )
        trace = day_trace(
            run_id=planned.run_id,
            run_name=self._names.get(planned.run_id, planned.run_id),
            day_index=planned.index,
            external_date=planned.external_date.isoformat(),
            model_id=planned.model_id,
        )
        return traced(conversation, trace, day_summary)

    def read(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn`` over the record in a read transaction of its own."""
        with self.db.read() as session:
            return fn(Store(session))

    unreachable = staticmethod(unreachable)

    def start(self, run_ref: str) -> Run:
        """Check the run may step and that no service holds it, mark it running, and take
        it for the CLI: from here no `loopsim serve` claims it until `run start`."""
        with self.db.write() as session:
            store = Store(session)
            run = store.get_run(run_ref, lock=True)
            holder = live_holder(store, run)
            taken = run.status == RunStatus.PAUSED and holder is None and not stepped_by_cli(run)
            if not taken:
                refuse_unless_steppable(run)
                if holder is not None:
                    raise InvalidState(
                        f"run {run.id} is being stepped by worker {holder}; "
                        f"`loopsim run pause {run.id}` stops it at the next day boundary"
                    )
            take_for_cli(run)
            if run.status == RunStatus.CREATED:
                store.set_status(run, RunStatus.RUNNING)
            store.flush()
        if taken:  # committed: a paused run is the command line's now, and stays paused
            raise InvalidState(
                f"run {run.id} is paused; it is now driven by `run step`, not serve: "
                f"`loopsim run resume {run.id}` then `loopsim run step {run.id}` steps it "
                f"(`loopsim run start {run.id}` gives it back to serve)"
            )
        return run

    def complete(self, run_ref: str, fence: Fence | None = None) -> None:
        """Mark the run completed: its day budget is spent."""
        with self.db.write() as session:
            store = Store(session)
            run = store.get_run(run_ref, lock=True)
            if fence is not None:
                fence(store, run)
            if run.status in STEPPABLE:
                store.set_status(run, RunStatus.COMPLETED, "day budget spent")

    def step(self, run_ref: str) -> DayResult | None:
        """Run one day. None means the day budget is spent and the run is now completed."""
        return self._step(run_ref, self.plan(run_ref))

    def _step(self, run_ref: str, planned: PlannedDay | None) -> DayResult | None:
        if planned is None:
            self.complete(run_ref)
            return None
        started = utcnow()
        chat = self._chat(planned.model_id, planned.spec)
        try:
            outcome = drive(self.conversation(planned), chat, self.read)
        except ModelUnavailable as error:
            outcome = self.unreachable(error, chat.version)
        return self.commit(planned, outcome, started)

    def commit(
        self,
        planned: PlannedDay,
        outcome: DayOutcome,
        started: dt.datetime,
        *,
        fence: Fence | None = None,
        worker: str = CLI_WORKER,
        generation: int | None = None,
    ) -> DayResult:
        with self.db.write() as session:
            store = Store(session)
            run = store.get_run(planned.run_id, lock=True)
            if fence is not None:
                fence(store, run)
            if store.next_day_index(run.id) != planned.index:
                raise ConcurrentWrite(
                    f"run {run.id} day {planned.index} was committed by another process; "
                    "this copy was discarded"
                )
            if run.status not in (*STEPPABLE, RunStatus.PAUSED):
                raise InvalidState(
                    f"run {run.id} became {run.status}; day {planned.index} was discarded"
                )
            status = DayStatus.COMMITTED if outcome.ok else DayStatus.FAILED
            day = store.add_day(
                run.id,
                planned.index,
                external_date=planned.external_date,
                status=status,
                model_id=planned.model_id,
                model_version=outcome.model_version,
                prompt_hash=planned.prompt.hash,
                prompt=planned.prompt.as_dicts(),
                raw_output=outcome.raw,
                error=outcome.error,
                attempts=outcome.attempts,
                tokens_in=outcome.tokens_in,
                tokens_out=outcome.tokens_out,
                latency_ms=outcome.latency_ms,
                started_at=started,
                finished_at=utcnow(),
                worker=worker,
                lease_generation=generation,
            )
            written = 0
            run_failed = False
            entries = []
            if outcome.report is not None:
                entries = store.append_entries(
                    run.id,
                    outcome.items,
                    day=day,
                    external_date=planned.external_date,
                    model_id=planned.model_id,
                    model_version=outcome.model_version,
                    prompt_hash=planned.prompt.hash,
                )
                written = len(entries)
                store.propose_probes(entries)
                if run.status == RunStatus.CREATED:
                    store.set_status(run, RunStatus.RUNNING)
            else:
                limit = self.settings.max_failed_days
                streak = store.failed_streak(run.id, limit, after_id=run.resumed_after_day_id or 0)
                if streak >= limit and run.status in STEPPABLE:
                    run_failed = True
                    store.set_status(
                        run,
                        RunStatus.FAILED,
                        f"{streak} failed days in a row; day {day.index}: {outcome.error}"[:1000],
                    )
            store.add_calls(day, outcome.calls, entries)
            if fence is not None:
                # Again as the last statement before COMMIT, by the database's clock now:
                # a worker frozen inside this transaction must not commit on a lease that
                # expired meanwhile (the row lock kept others out, not the clock).
                session.flush()
                fence(store, run)
        self.chains.extend(planned.run_id, entries)  # committed: ours, chained on
        return DayResult(
            planned.index,
            status,
            planned.external_date,
            written,
            outcome.latency_ms,
            outcome.error,
            outcome.tokens_in,
            outcome.tokens_out,
            run_failed,
        )

    def checkin_due(self, run_ref: str) -> bool:
        """Whether :meth:`open_due_checkin` has anything to do now: one read, no model call."""
        with self.db.read() as session:
            store = Store(session)
            return self._due(store, store.get_run(run_ref))

    def _due(self, store: Store, run: Run, checkins: Sequence[CheckinRow] | None = None) -> bool:
        if run.status != RunStatus.RUNNING:
            return False
        return due_now(store, run, self.spec_of(run), self.similarity, checkins) is not None

    def open_due_checkin(
        self, run_ref: str, fence: Fence | None = None, on_predict: OnPredict | None = None
    ) -> int | None:
        """Open a check-in if one is due: predictions first (model calls, outside any
        transaction; ``on_predict``, or :attr:`on_predict`, may stop them by raising
        :class:`Interrupted`), then one write that records them and makes the run wait."""
        with self.db.read() as session:
            store = Store(session)
            run = store.get_run(run_ref)
            if run.status != RunStatus.RUNNING:
                return None
            spec = self.spec_of(run)
            found = due_now(store, run, spec, self.similarity)
            if found is None:
                return None
            wanted = plan_predictions(
                store,
                run,
                spec,
                found,
                self.similarity,
                budget=self.settings.view_token_budget,
                limit=self._prompt_limit(run.model, spec),
            )
            model_id = run.model
        last_day, reason, detail = found.last_day, wanted.reason, wanted.detail
        calls: list[Logged] = []  # every prediction call, kept with the span's last day
        try:
            predictions = predict(
                wanted,
                lambda: self._chat(model_id, spec),
                model_id,
                max_retries=self.settings.max_retries,
                calls=calls,
                on_predict=on_predict or self.on_predict,
            )
        except (ModelUnavailable, Interrupted):
            self.keep_calls(run.id, last_day, calls, fence)
            raise
        self.keep_calls(run.id, last_day, calls, fence)
        if reason is None:
            old = dict(found.recheck)
            sims = [
                self.similarity(old[pid], text or "") for pid, text, _ in predictions if pid in old
            ]
            distance = 1 - sum(sims) / len(sims) if sims else 0.0
            if distance < spec.checkins.prediction_drift_threshold:
                return None
            reason = CheckinReason.PREDICTION_DRIFT
            detail = f"re-predicted probes moved {distance:.2f} from the approved predictions"
        opening = Opening(
            run.id, reason, found.first_day, last_day, predictions, detail, wanted.retests
        )
        return open_checkin(self.db, opening, fence, similarity=self.similarity)

    def keep_calls(
        self, run_id: str, day_index: int, calls: list[Logged], fence: Fence | None = None
    ) -> None:
        """Record calls made after day ``day_index`` committed (probe predictions) with
        that day, in a write of their own: made, they are kept, whether or not the
        check-in then opens. A worker whose lease was lost writes nothing."""
        if not calls:
            return
        with self.db.write() as session:
            store = Store(session)
            run = store.get_run(run_id, lock=True)
            if fence is not None:
                fence(store, run)
            store.add_later_calls(run.id, day_index, calls)

    def run_days(
        self,
        run_ref: str,
        days: int,
        *,
        on_day: Callable[[DayResult], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[DayResult]:
        """Step up to ``days`` days. Stop early on a failed day, a spent budget, a stop
        request, or a check-in coming due (then ``self.opened_checkin`` names it).

        A check-in is tested for before the first day and after every committed one. The
        test before a day shares :meth:`next_day`'s read with the day's plan, as a
        worker's does; only the test after the last day is a read of its own, and it is
        left to the next step when a stop was asked for (its predictions are model calls,
        minutes on the embedded model)."""
        self.start(run_ref)
        self.opened_checkin = None
        results: list[DayResult] = []
        test_after, spent = True, False  # the check-in test owed at the end; budget spent
        while len(results) < days and not should_stop():
            planned = self.next_day(run_ref)
            if planned is Turn.CHECKIN_DUE:
                self.opened_checkin = self.open_due_checkin(run_ref)
                if self.opened_checkin is not None:
                    return results
                planned = self.plan(run_ref)  # due, yet nothing opened: the day goes on
            result = self._step(run_ref, planned)
            if result is None:
                test_after = False  # the budget is spent: the run is completed
                break
            results.append(result)
            if on_day:
                on_day(result)
            if result.status != DayStatus.COMMITTED:
                test_after = False
                break
            spent = planned is not None and planned.last_of_budget
        if test_after and not should_stop():  # a stop asked for now: the next step tests
            self.opened_checkin = self.open_due_checkin(run_ref)
            if spent and self.opened_checkin is None:  # completed now, not at the next step
                self.complete(run_ref)
        return results
