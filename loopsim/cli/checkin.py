"""``loopsim checkin ...``: list, review (interactive) and decide check-ins.

The review is blind: each answer is committed to the database before the prediction is
read from it, so no screen shows a prediction before the human's answer is stored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loopsim.cli.asking import Interrupted, ask, ask_text
from loopsim.cli.context import ID_MAX, AppContext, app_context, print_unfolded
from loopsim.errors import SpecError
from loopsim.exports.markdown import checkin_record, safe_text
from loopsim.record.store import Store
from loopsim.schemas import Decision, ModelSpec, RunSpec
from loopsim.text import plural

# The check-in logic (decision, scoring, the schedule and its date parsing, drift) is
# imported by the commands that use it, so that `checkin list` and every other command
# start without it.
if TYPE_CHECKING:
    from loopsim.chat.handle import ChatHandle
    from loopsim.checkin.answers import Answers
    from loopsim.checkin.decision import Judge
    from loopsim.checkin.judge import Judged
    from loopsim.checkin.scoring import CheckinScore
    from loopsim.record.tables import Probe

app = typer.Typer(no_args_is_help=True, help="Review and decide human check-ins.")

IdArg = Annotated[
    int,
    typer.Argument(metavar="ID", min=1, max=ID_MAX, help="Check-in id (`checkin list`)."),
]


@app.command("list")
def checkin_list(
    ctx: typer.Context,
    pending: Annotated[bool, typer.Option("--pending", help="Only undecided ones.")] = False,
    run_ref: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List check-ins, oldest first."""
    a = app_context(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run_id = store.get_run(run_ref).id if run_ref else None
        rows = [checkin_record(store, c) for c in store.list_checkins(run_id, pending=pending)]
    if as_json:
        a.print_json(rows)
        return
    if not rows:
        a.out.print("no check-ins")
        return
    names = ("id", "run", "reason", "days", "decision", "drift")
    cells = [
        (
            str(r["id"]),
            r["run_id"],
            r["reason"],
            f"{r['first_day']}-{r['last_day']}",
            r["decision"] or "pending",
            "-" if r["drift_score"] is None else f"{r['drift_score']:.2f}",
        )
        for r in rows
    ]
    widths = {n: max(len(n), *(len(row[i]) for row in cells)) for i, n in enumerate(names)}
    room = a.out.width - 2 * (len(names) - 1)
    sized = a.out.is_terminal or os.environ.get("COLUMNS", "").strip().isdigit()
    if sized and sum(widths.values()) > room:
        # One line a check-in, as `run list`: the run's id gives way, to a 12-character
        # prefix any command still takes; into a pipe, every value whole.
        widths["run"] = 12
    table = Table(box=None, pad_edge=False)
    for name in names:
        table.add_column(
            name, no_wrap=True, width=widths[name], overflow="crop" if name == "run" else "ellipsis"
        )
    for row in cells:
        table.add_row(*row)
    print_unfolded(a.out, table, sum(widths.values()) + 2 * len(names))  # a pipe: no cut


def _judge_for(a: AppContext, checkin_id: int) -> Judge | None:
    """The judge the run's spec names, built at its first verdict (a model may take
    seconds to load), or None."""
    from loopsim.checkin.judge import JUDGE_MAX_TOKENS, judge

    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(store.get_checkin(checkin_id).run_id)
        spec = RunSpec.model_validate(run.spec)
        named = spec.checkins.judge
        model_id = run.model if named == "run" else named
    if model_id is None:
        return None
    model_spec = spec.model if named == "run" else ModelSpec()
    built: list[ChatHandle] = []

    def verdict(probe: Probe, answer: str, prediction: str) -> Judged:
        if not built:
            built.append(a.chats()(model_id, model_spec, JUDGE_MAX_TOKENS))
        return judge(built[0], probe.question, answer, prediction)

    return verdict


def _apply(
    a: AppContext,
    checkin_id: int,
    decision: Decision,
    note: str | None,
    answers: Answers | None,
    *,
    skip_probes: bool = False,
    source: str = "answers",
) -> None:
    from loopsim.checkin.decision import decide

    outcome = decide(
        a.open_db(),
        checkin_id,
        decision,
        note=note,
        answers=answers,
        similarity=a.similarity(),
        require_answers=not skip_probes,
        source=source,
        judge=_judge_for(a, checkin_id),
    )
    with a.open_db().read() as session:
        store = Store(session)
        record = checkin_record(store, store.get_checkin(checkin_id))
    said = str(decision)
    if record["decided_without_answers"]:  # as every export and `checkin show` say it
        said += (
            f" without answers ({record['unanswered']} of {len(record['pairs'])} probes unanswered)"
        )
    level = outcome.drift
    trend = "n/a" if level.trend is None else f"{level.trend:.2f}"
    if level.score is None:  # nothing compared: no drift of this check-in, not a 1.00
        drift = f"drift not measured (no prediction compared; trend so far {trend})"
    else:
        drift = f"drift {level.score:.2f} (trend {trend}, {level.level})"
    extra = f", {plural(outcome.reverted_days, 'day')} reverted" if outcome.reverted_days else ""
    if outcome.agreement is not None:
        extra += f"; agreement {outcome.agreement:.2f}"
        if outcome.ceiling is not None:
            # The scale's top: a prediction as close as the human's own retests were.
            extra += (
                ", where 1.00 is as close as your own retests "
                f"(their similarity {outcome.ceiling:.2f})"
            )
    # One line each, whatever the width: scripts read them, and rich would fold them at 80
    # columns when stderr is a pipe.
    a.err.print(f"check-in {checkin_id}: {said}{extra}; {drift}", soft_wrap=True)
    if outcome.schedule:
        a.err.print(outcome.schedule, soft_wrap=True)


@app.command("decide")
def checkin_decide(
    ctx: typer.Context,
    checkin_id: IdArg,
    approve: Annotated[bool, typer.Option("--approve", help="Go on.")] = False,
    amend: Annotated[
        bool, typer.Option("--amend", help="Go on with a pinned correction (--note).")
    ] = False,
    reject: Annotated[
        bool,
        typer.Option(
            "--reject", help="Revert the days since the last approval and go on from there."
        ),
    ] = False,
    halt: Annotated[bool, typer.Option("--halt", help="Stop the run.")] = False,
    note: Annotated[str | None, typer.Option(help="The correction, or a note.")] = None,
    answers: Annotated[
        Path | None,
        typer.Option(
            help='JSON: {"<key>": {"answer": "...", "rating": 1-5}}; a key is a probe\'s '
            'position in the check-in ("1") or its id ("#7"). Keys that match no probe are '
            "refused."
        ),
    ] = None,
    skip_probes: Annotated[
        bool,
        typer.Option("--skip-probes", help="Approve or amend although some probes have no answer."),
    ] = False,
) -> None:
    """Decide a check-in from a script. A check-in is decided once.

    Approve and amend need an answer to every probe (stored by `checkin review` or given
    with --answers) unless --skip-probes is given; exports then mark the check-in as
    decided without answers."""
    chosen = [
        d
        for d, flag in (
            (Decision.APPROVE, approve),
            (Decision.AMEND, amend),
            (Decision.REJECT, reject),
            (Decision.HALT, halt),
        )
        if flag
    ]
    if len(chosen) != 1:
        raise SpecError("give exactly one of --approve, --amend, --reject, --halt")
    from loopsim.checkin.answers import load_answers

    a = app_context(ctx)
    given = load_answers(answers) if answers else None
    _apply(a, checkin_id, chosen[0], note, given, skip_probes=skip_probes, source=str(answers))


@dataclass
class _Step:
    pair_id: int
    question: str
    answer: str | None
    rating: int | None
    retest: bool


@app.command("review")
def checkin_review(ctx: typer.Context, checkin_id: IdArg) -> None:
    """Review a check-in: read the days, answer each probe blind, see the prediction and
    rate it, then decide. A probe the model gave no valid prediction for asks no rating
    and does not count toward drift.

    Ctrl-C or Ctrl-D stops the review; what was entered is stored, and running the same
    command again resumes at the first step not stored yet. Stored answers and ratings are
    shown, never asked again or overwritten."""
    a = app_context(ctx)
    try:
        _review(a, checkin_id)
    except (Interrupted, KeyboardInterrupt) as exc:
        code = exc.code if isinstance(exc, Interrupted) else 130
        a.err.print(
            f"review of check-in {checkin_id} stopped; what you entered is stored. "
            f"Resume with: loopsim checkin review {checkin_id}",
            soft_wrap=True,
        )
        raise typer.Exit(code) from None


def _review(a: AppContext, checkin_id: int) -> None:
    from loopsim.checkin import drift
    from loopsim.checkin.answers import rate, record_answer, require_open, reveal
    from loopsim.checkin.opening import usable
    from loopsim.checkin.schedule import last_approved_day
    from loopsim.checkin.scoring import score_checkin

    database = a.open_db()
    with database.read() as session:
        store = Store(session)
        c = store.get_checkin(checkin_id)
        require_open(c)
        run = store.get_run(c.run_id)
        spec = RunSpec.model_validate(run.spec)
        since = last_approved_day(store, run.id)
        # Only the days since the last approval: not the whole record, however long.
        entries = [
            (e, i)
            for e, i, _status in store.list_entries(
                run.id, day_range=(since + 1, ID_MAX), include_reverted=False
            )
        ]
        steps = [
            _Step(p.id, probe.question, p.human_answer, p.rating, p.is_retest)
            for p, probe in store.pairs(c.id)
        ]
    out = a.out
    similarity = a.similarity()
    out.print(
        Text(
            f"check-in {c.id} ({c.reason}) for run {run.id}: days {since + 1}-{c.last_day_index}",
            style="bold",
        )
    )
    answered = sum(1 for s in steps if s.answer is not None)
    rated = sum(1 for s in steps if s.rating is not None)
    if answered or rated:
        out.print(
            Text(
                f"resuming: {answered} of {len(steps)} answers and {rated} ratings are stored; "
                "they are shown, not asked again"
            )
        )
    # Babble and prune: the critic's picks come first, best score first, then oldest.
    scores = {e.parent_id: e.score for e, _ in entries if e.kind == "critique"}
    flagged = sorted(
        ((e, i) for e, i in entries if e.flagged),
        key=lambda item: (-(scores.get(item[0].id) or 0), item[0].seq),
    )
    if flagged:
        out.print(
            Text(f"\nmost promising ideas ({len(flagged)}), flagged by the critic:", style="bold")
        )
        for entry, index in flagged:
            critic = scores.get(entry.id)
            mark = f" (score {critic}/10)" if critic is not None else ""
            out.print(
                Text(
                    f"\n★ day {index} #{entry.seq} idea{mark} · {safe_text(entry.title)}",
                    style="green",
                )
            )
            out.print(Text(safe_text(entry.body)))
        out.print(Text("\nall days:", style="bold"))
    for entry, index in entries:
        out.print(
            Text(
                f"\nday {index} #{entry.seq} {entry.kind} · {safe_text(entry.title)}", style="cyan"
            )
        )
        out.print(Text(safe_text(entry.body)))
    for number, step in enumerate(steps, 1):
        again = " (asked before)" if step.retest else ""
        out.print(
            Text(
                f"\nprobe {number} of {len(steps)}{again}: {safe_text(step.question)}",
                style="bold",
            )
        )
        if step.answer is None:
            answer = ask_text("your answer (the prediction is shown after it is saved)")
            record_answer(database, step.pair_id, answer)
            out.print("saved.")
        else:
            out.print(Text(f"your stored answer: {safe_text(step.answer)}"))
        prediction = reveal(database, step.pair_id, similarity)
        if not usable(prediction):
            # Nothing to rate: a rating of the placeholder would be a rating of nothing.
            out.print(Text(f"no prediction to compare: {_why_none(prediction)}", style="magenta"))
            continue
        out.print(Text(f"the simulation predicted: {safe_text(prediction)}", style="magenta"))
        if step.rating is None:
            rating = int(ask("agreement, 1 (none) to 5 (same view)", ["1", "2", "3", "4", "5"]))
            rate(database, step.pair_id, rating)
        else:
            out.print(Text(f"your stored rating: {step.rating}"))
    with database.read() as session:
        store = Store(session)
        scored = score_checkin(store, c.id, similarity)
        history = [x.drift_score for x in store.list_checkins(run.id) if x.drift_score is not None]
    show_scores(out, scored)
    score = scored.drift
    level = drift.classify(
        score,
        drift.ewma([*history, score] if score is not None else history),
        spec.checkins.drift_warn,
        spec.checkins.drift_alarm,
    )
    if level.score is not None:
        out.print(f"\ndrift {level.score:.2f}, trend {level.trend:.2f}: {level.level}")
    consequences = {
        Decision.REJECT: f"reject reverts days {since + 1}-{c.last_day_index} of run {run.id}",
        Decision.HALT: f"halt stops run {run.id}",
    }
    while True:
        choice = Decision(
            ask("decision (approve, amend, reject, halt)", [d.value for d in Decision])
        )
        if choice not in consequences:
            break
        sure = ask(f"{consequences[choice]}; sure? y/N", ["y", "yes", "n", "no", ""])
        if sure in ("y", "yes"):
            break
        out.print("not decided; choose again.")
    note = None
    if choice == Decision.AMEND:
        note = ask_text("correction (pinned in every later day)")
    _apply(a, checkin_id, choice, note, None)


def _why_none(placeholder: str) -> str:
    """Why a probe has no prediction, from the placeholder stored in its place."""
    from loopsim.checkin.opening import NO_PREDICTION

    reason = placeholder.removeprefix(NO_PREDICTION).strip(" :)")
    said = f" ({safe_text(reason)})" if reason else ""
    return (
        f"the model gave no valid prediction{said}; no rating is asked, and this probe "
        "does not count toward drift"
    )


def show_scores(out: Console, scored: CheckinScore) -> None:
    """Per probe, the figures drift is made of: what counted, and what it came from."""
    levels = scored.levels
    ceiling = "your retests" if levels.ceiling_source == "retest" else "the similarity's prior"
    chance = "other probes' answers" if levels.null_source == "run" else "the similarity's prior"
    out.print(
        Text(
            f"\nagreement per probe ({scored.kind} similarity read between chance "
            f"{levels.null:.2f}, from {chance}, and ceiling {levels.ceiling:.2f}, from {ceiling}):"
        )
    )
    for number, pair in enumerate(scored.pairs, 1):
        if not pair.predicted and pair.agreement is None:
            out.print(Text(f"  probe {number}: no prediction to compare, not counted"))
            continue
        if pair.agreement is None:
            out.print(Text(f"  probe {number}: not answered"))
            continue
        if not pair.predicted:
            out.print(
                Text(f"  probe {number}: no prediction; your rating {pair.rating} counts anyway")
            )
            continue
        parts = [f"similarity {pair.similarity:.2f}, calibrated {pair.calibrated:.2f}"]
        if pair.judge is not None:
            parts.append(f"judge {pair.judge}")
        if pair.rating is not None:
            parts.append(f"your rating {pair.rating}")
        counted = "rating" if pair.rating is not None else "judge" if pair.judge else "similarity"
        out.print(
            Text(
                f"  probe {number}: agreement {pair.agreement:.2f} ({', '.join(parts)}; "
                f"the {counted} counts)"
            )
        )


@app.command("show")
def checkin_show(
    ctx: typer.Context,
    checkin_id: IdArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one check-in: why, which days, the decision and drift, and each probe with the
    answer and rating stored so far. A prediction is shown only once its blind answer is
    stored. Starts no review and changes nothing."""
    a = app_context(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        record = checkin_record(store, store.get_checkin(checkin_id))
    if as_json:
        a.print_json(record)
        return
    out = a.out
    decision = record["decision"] or "pending"
    if record["decided_without_answers"]:
        decision += (
            f" without answers ({record['unanswered']} of {len(record['pairs'])} probes unanswered)"
        )
    score = "-" if record["drift_score"] is None else f"{record['drift_score']:.2f}"
    rows = [
        ("check-in", str(record["id"])),
        ("run", record["run_id"]),
        ("reason", record["reason"]),
        ("detail", record["detail"]),
        ("days", f"{record['first_day']}-{record['last_day']}"),
        ("opened", record["opened_at"]),
        ("decision", decision),
        ("decided", record["decided_at"]),
        ("note", record["note"]),
        ("drift", score),
    ]
    for key, value in rows:
        if value is not None:
            out.print(Text(f"{key:10} {safe_text(value)}"))
    pairs = record["pairs"]
    for number, pair in enumerate(pairs, 1):
        again = ", asked before" if pair["is_retest"] else ""
        out.print(
            Text(
                f"\nprobe {number} of {len(pairs)} (#{pair['probe_id']}{again}): "
                f"{safe_text(pair['question'])}",
                style="bold",
            )
        )
        answer = pair["human_answer"]
        # Decided without it, a probe is never answered: "yet" would promise otherwise.
        missing = "(not answered)" if record["decision"] else "(not answered yet)"
        out.print(Text(f"  answer:     {safe_text(answer) if answer else missing}"))
        prediction = pair["prediction"]
        shown = safe_text(prediction) if prediction is not None else HIDDEN_UNTIL_ANSWERED
        out.print(Text(f"  prediction: {shown}"))
        if pair["rating"] is not None or pair["similarity"] is not None:
            sim = "n/a" if pair["similarity"] is None else f"{pair['similarity']:.2f}"
            out.print(Text(f"  rating:     {pair['rating'] or 'n/a'}, similarity {sim}"))
    if not pairs:
        out.print(Text("\nno probes"))


HIDDEN_UNTIL_ANSWERED = "(hidden until the blind answer is stored)"
