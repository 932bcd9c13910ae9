"""``loopsim run compare A B``: two runs side by side from their common prefix
(:mod:`loopsim.exports.compare`, docs/forks.md).

Model text is data: titles and predictions are stripped of control characters before
they reach a terminal, and ``--json`` escapes them as every JSON output does.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from loopsim.cli.context import app_context
from loopsim.record.store import Store
from loopsim.text import safe_text

TYPE_CHECKING = False
if TYPE_CHECKING:  # the comparison (and drift's similarity) load only when a command runs
    from loopsim.exports.compare import CheckinRow, Comparison, DayRow, DaySide


def run_compare(
    ctx: typer.Context,
    run_a: Annotated[
        str, typer.Argument(metavar="A", help="Run id, or a unique prefix of it (4+ characters).")
    ],
    run_b: Annotated[
        str, typer.Argument(metavar="B", help="Run id, or a unique prefix of it (4+ characters).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document instead of tables.")
    ] = False,
) -> None:
    """Compare two runs from their common prefix: the days after it side by side with
    the divergence of their records (1 - similarity of each day's text), the drift of
    each run's check-ins, and both runs' predictions for the probes they share."""
    from loopsim.exports.compare import compare

    a = app_context(ctx)
    similarity = a.similarity()
    with a.open_db().read() as session:
        store = Store(session)
        first, second = store.get_run(run_a), store.get_run(run_b)
        result = compare(store, first, second, similarity)
    if as_json:
        a.print_json(result.to_dict())
        return
    _print(a.out, result)


def _side(side: DaySide | None) -> Text:
    if side is None:
        return Text("-", style="dim")
    text = Text(f"{side.external_date} {side.status}\n", style="dim")
    text.append("\n".join(safe_text(" ".join(t.split())) for t in side.titles) or "(no entries)")
    return text


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _divergence(row: DayRow) -> Text:
    """The figure, or why there is none: a bare "-" read as a failure to compare."""
    why = row.no_divergence
    return Text(why, style="dim") if why else Text(_figure(row.divergence))


def _checkin_line(name: str, row: CheckinRow) -> Text:
    where = " (prefix)" if row.in_prefix else ""
    return Text(
        f"  {name}  #{row.id} days {row.first_day}-{row.last_day} {row.reason}{where}: "
        f"{row.decision or 'pending'}, drift {_figure(row.drift_score)}, "
        f"trend {_figure(row.trend)}"
    )


def _print(out: Console, result: Comparison) -> None:
    a, b, prefix = result.a, result.b, result.prefix
    # The last committed day's index, not a count: a reverted day keeps its index, so a
    # run can be at day 5 with 4 days committed (`run list` counts those).
    for letter, run in (("A", a), ("B", b)):
        reached = f"last day {run.last_day}" if run.last_day else "no day yet"
        out.print(Text(f"{letter}  {run.id}  {safe_text(run.name)}  ({run.status}, {reached})"))
    out.print(Text(f"relation: {prefix.relation}"))
    if prefix.days:
        date = f" ({prefix.external_date})" if prefix.external_date else ""
        from loopsim.exports.compare import days_span

        out.print(Text(f"common prefix: {days_span(prefix.days)}{date}"))
    else:
        out.print(Text("common prefix: none"))
    out.print(Text(f"spec differs in: {', '.join(result.spec_differs) or 'nothing'}"))
    if result.days:
        table = Table(title=f"days after the prefix (divergence: {result.similarity})")
        table.add_column("day", justify="right")
        table.add_column("A")
        table.add_column("B")
        table.add_column("divergence", justify="right")
        for row in result.days:
            table.add_row(str(row.index), _side(row.a), _side(row.b), _divergence(row))
        out.print(table)
        out.print(Text(f"mean divergence: {_figure(result.mean_divergence)}"))
    else:
        out.print(Text("no days after the prefix"))
    out.print(Text("check-ins:"))
    for name, rows in (("A", result.checkins_a), ("B", result.checkins_b)):
        if not rows:
            out.print(Text(f"  {name}  none"))
        for checkin in rows:
            out.print(_checkin_line(name, checkin))
    if result.probes:
        out.print(Text("probes both runs hold (latest prediction of each):"))
    for probe in result.probes:
        out.print(Text(f"  ? {safe_text(probe.question)}"))
        for name, predictions in (("A", probe.a), ("B", probe.b)):
            if not predictions:
                out.print(Text(f"    {name}: no prediction yet", style="dim"))
                continue
            last = predictions[-1]
            said = "(hidden until the human's blind answer is stored)"
            if last.prediction is not None:
                said = " ".join(safe_text(last.prediction).split())
            out.print(Text(f"    {name} (check-in #{last.checkin_id}): {said}"))
