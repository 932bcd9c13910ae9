"""``loopsim probe ...``: the run's bank of probe questions.

Probes come from the run spec (accepted), from a human (`probe add`, accepted), or from
the researcher's own ``question`` entries (proposed: never asked until a human accepts).
The researcher is never told that its questions may become probes.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from loopsim.cli.context import ID_MAX, RunArg, app_context
from loopsim.errors import InvalidState, SpecError
from loopsim.exports.markdown import safe_text
from loopsim.record.store import Store
from loopsim.schemas import DayStatus
from loopsim.text import plural

app = typer.Typer(no_args_is_help=True, help="The run's bank of probe questions.")

STATUSES = ("proposed", "accepted", "rejected")


@app.command("list")
def probe_list(
    ctx: typer.Context,
    run_ref: RunArg,
    status: Annotated[str | None, typer.Option(help="proposed, accepted or rejected.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a run's probes."""
    if status is not None and status not in STATUSES:
        raise SpecError(f"--status: expected one of {', '.join(STATUSES)}")
    a = app_context(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        rows: list[dict[str, str | int | None]] = [
            {
                "id": p.id,
                "status": p.status,
                "source": p.source,
                "day": index,
                "day_status": day_status,
                "question": p.question,
            }
            for p, index, day_status in store.probes_with_days(run.id, status)
        ]
    if as_json:
        a.print_json(rows)
        return
    table = Table(box=None)
    for name in ("id", "status", "source", "day"):
        table.add_column(name, no_wrap=True)
    table.add_column("question")
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["status"]),
            str(r["source"]),
            _day_cell(r["day"], r["day_status"]),
            Text(safe_text(str(r["question"]))),
        )
    a.out.print(table if rows else "no probes")


def _day_cell(index: object, status: object) -> str:
    """The day that proposed a probe, marked if a check-in reverted it."""
    if index is None:
        return ""
    return f"{index} (reverted)" if status == DayStatus.REVERTED else str(index)


@app.command("add")
def probe_add(
    ctx: typer.Context,
    run_ref: RunArg,
    question: Annotated[str, typer.Argument(help="A question the real researcher can answer.")],
) -> None:
    """Add an accepted probe written by a human; prints its id."""
    text = question.strip()
    if not 3 <= len(text) <= 500:
        raise SpecError("a probe question is 3 to 500 characters")
    a = app_context(ctx)
    with a.open_db().write() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        probe_id = store.add_probe(run.id, text, source="human", status="accepted").id
    a.out.print(probe_id)


def _set(ctx: typer.Context, ids: list[int], status: str) -> None:
    a = app_context(ctx)
    reverted = []
    with a.open_db().write() as session:
        store = Store(session)
        found = {p.id: (p, index, day) for p, index, day in store.probes_with_days(ids=ids)}
        for i in ids:
            if i not in found:
                store.get_probe(i)  # raises NotFound, with its hint
            probe, index, day = found[i]
            if probe.status != "proposed":
                raise InvalidState(f"probe {probe.id} is {probe.status}, not proposed")
            probe.status = status
            if day == DayStatus.REVERTED:
                reverted.append(f"probe {probe.id} (day {index})")
    a.err.print(f"{status} {plural(len(ids), 'probe')}")
    if reverted and status == "accepted":
        # The human's call, but not one to make unawares: `probe list` shows it too.
        a.err.print(f"note: {', '.join(reverted)} came from days a check-in reverted")


@app.command("accept")
def probe_accept(
    ctx: typer.Context,
    ids: Annotated[list[int], typer.Argument(metavar="ID...", min=1, max=ID_MAX)],
) -> None:
    """Accept proposed probes, so check-ins may ask them."""
    _set(ctx, ids, "accepted")


@app.command("reject")
def probe_reject(
    ctx: typer.Context,
    ids: Annotated[list[int], typer.Argument(metavar="ID...", min=1, max=ID_MAX)],
) -> None:
    """Reject proposed probes."""
    _set(ctx, ids, "rejected")
