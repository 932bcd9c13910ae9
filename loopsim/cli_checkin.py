"""``loopsim checkin ...``: list, review (interactive) and decide check-ins.

The review is blind: each answer is committed to the database before the prediction is
read from it, so no screen shows a prediction before the human's answer is stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from loopsim import checkin as ck
from loopsim import drift
from loopsim.cli import ID_MAX, AppContext, _app, checkin_app
from loopsim.errors import SpecError
from loopsim.export import checkin_record, safe_text
from loopsim.schemas import Decision, RunSpec
from loopsim.store import Store

IdArg = Annotated[
    int,
    typer.Argument(metavar="ID", min=1, max=ID_MAX, help="Check-in id (`checkin list`)."),
]


@checkin_app.command("list")
def checkin_list(
    ctx: typer.Context,
    pending: Annotated[bool, typer.Option("--pending", help="Only undecided ones.")] = False,
    run_ref: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List check-ins, oldest first."""
    a = _app(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run_id = store.get_run(run_ref).id if run_ref else None
        rows = [checkin_record(store, c) for c in store.list_checkins(run_id, pending=pending)]
    if as_json:
        a.print_json(rows)
        return
    table = Table(box=None)
    for name in ("id", "run", "reason", "days", "decision", "drift"):
        table.add_column(name, no_wrap=True)
    for r in rows:
        score = "-" if r["drift_score"] is None else f"{r['drift_score']:.2f}"
        table.add_row(
            str(r["id"]),
            r["run_id"],
            r["reason"],
            f"{r['first_day']}-{r['last_day']}",
            r["decision"] or "pending",
            score,
        )
    a.out.print(table if rows else "no check-ins")


def _apply(
    a: AppContext,
    checkin_id: int,
    decision: Decision,
    note: str | None,
    answers: dict[int, dict[str, Any]] | None,
) -> None:
    outcome = ck.decide(
        a.open_db(), checkin_id, decision, note=note, answers=answers, similarity=a.similarity()
    )
    level = outcome.drift
    score = "n/a" if level.score is None else f"{level.score:.2f}"
    trend = "n/a" if level.trend is None else f"{level.trend:.2f}"
    extra = f", {outcome.reverted_days} days reverted" if outcome.reverted_days else ""
    if outcome.agreement is not None and outcome.ceiling is not None:
        extra += (
            f"; agreement {outcome.agreement:.2f} against your own consistency "
            f"{outcome.ceiling:.2f}"
        )
    a.err.print(
        f"check-in {checkin_id}: {decision}{extra}; drift {score} (trend {trend}, {level.level})"
    )


@checkin_app.command("decide")
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
        Path | None, typer.Option(help='JSON: {"<probe id>": {"answer": "...", "rating": 1-5}}.')
    ] = None,
) -> None:
    """Decide a check-in from a script. A check-in is decided once."""
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
    a = _app(ctx)
    _apply(a, checkin_id, chosen[0], note, ck.load_answers(answers) if answers else None)


def _ask(question: str, choices: list[str]) -> str:
    """Prompt until the reply is one of ``choices``; end of input aborts cleanly."""
    while True:
        reply = str(typer.prompt(question)).strip().lower()
        if reply in choices:
            return reply
        typer.echo(f"please answer one of: {', '.join(choices)}", err=True)


@checkin_app.command("review")
def checkin_review(ctx: typer.Context, checkin_id: IdArg) -> None:
    """Review a check-in: read the days, answer each probe blind, see the prediction and
    rate it, then decide."""
    a = _app(ctx)
    database = a.open_db()
    with database.read() as session:
        store = Store(session)
        c = store.get_checkin(checkin_id)
        ck._require_open(c)
        run = store.get_run(c.run_id)
        spec = RunSpec.model_validate(run.spec)
        since = ck.last_approved_day(store, run.id)
        entries = [
            (e, i)
            for e, i, status in store.list_entries(run.id, include_reverted=False)
            if i is not None and i > since
        ]
        pairs = [
            (p.id, p.answered_at is not None, probe.question) for p, probe in store.pairs(c.id)
        ]
    out = a.out
    similarity = a.similarity()
    out.print(
        Text(
            f"check-in {c.id} ({c.reason}) for run {run.id}: days {since + 1}-{c.last_day_index}",
            style="bold",
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
    for number, (pair_id, answered, question) in enumerate(pairs, 1):
        out.print(Text(f"\nprobe {number} of {len(pairs)}: {safe_text(question)}", style="bold"))
        if not answered:
            answer = typer.prompt("your answer (the prediction is shown after it is saved)")
            ck.record_answer(database, pair_id, answer)
            out.print("saved.")
        prediction = ck.reveal(database, pair_id, similarity)
        out.print(Text(f"the simulation predicted: {safe_text(prediction)}", style="magenta"))
        rating = int(_ask("agreement, 1 (none) to 5 (same view)", ["1", "2", "3", "4", "5"]))
        ck.rate(database, pair_id, rating)
    with database.read() as session:
        store = Store(session)
        agreements = [
            drift.agreement(p.similarity, p.rating)
            for p, _ in store.pairs(c.id)
            if p.similarity is not None
        ]
        history = [x.drift_score for x in store.list_checkins(run.id) if x.drift_score is not None]
    score = drift.drift_score(agreements)
    level = drift.classify(
        score,
        drift.ewma([*history, score] if score is not None else history),
        spec.checkins.drift_warn,
        spec.checkins.drift_alarm,
    )
    if level.score is not None:
        out.print(f"\ndrift {level.score:.2f}, trend {level.trend:.2f}: {level.level}")
    choice = _ask("decision (approve, amend, reject, halt)", [d.value for d in Decision])
    note = None
    if choice == Decision.AMEND:
        note = typer.prompt("correction (pinned in every later day)")
    _apply(a, checkin_id, Decision(choice), note, None)
