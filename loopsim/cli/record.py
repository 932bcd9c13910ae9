"""``loopsim record ...``: read, search, verify and amend a run's record.

Model text is data: it is stripped of control characters before it reaches a terminal.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.text import Text

from loopsim.cli.context import ID_MAX, RunArg, app_context
from loopsim.errors import RecordBroken, SpecError
from loopsim.exports.markdown import entry_marks, safe_text
from loopsim.record.chain import KEYED_HINT, emptied_text
from loopsim.record.db import Database
from loopsim.record.store import Store, dropped_words, search_terms
from loopsim.record.streams import BATCH, EntryRow
from loopsim.schemas import DayStatus, EntryKind
from loopsim.text import failure, plural

app = typer.Typer(no_args_is_help=True, help="Read and verify a run's written record.")


@app.command("show")
def record_show(
    ctx: typer.Context,
    run_ref: RunArg,
    day: Annotated[int | None, typer.Option(min=1, max=ID_MAX, help="Only this day.")] = None,
) -> None:
    """Print the record. Terminal escapes in model text are stripped."""
    a = app_context(ctx)
    database = a.open_db()
    with database.read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        if day is not None:
            store.get_day(run.id, day)
    # A page of entries at a time, each read in a transaction of its own: memory stays
    # flat however long the record, and a pager left open holds no snapshot of it. The
    # failed tries are read the same way, and each is shown before the day at its index.
    failed = _failed_tries(database, run.id, day)
    pending = next(failed, None)
    current: object = object()
    depth: dict[int, int] = {}  # entry id -> depth in its day's tree, for the day shown
    digests: dict[int, int] = {}  # the same for digests, which a later amendment answers
    after, shown = 0, 0
    while True:
        with database.read() as session:
            page = Store(session).entry_page(run.id, after, day_index=day)
        # One print a page: rich's cost is mostly per call (a third of it, batched).
        parts: list[tuple[str, str]] = []
        for entry, day_index, status, date in page:
            if day_index != current:
                current, depth = day_index, {}
                while pending is not None and day_index is not None and pending[0] <= day_index:
                    parts.append(_failed_line(*pending, gap=bool(shown or parts)))
                    pending = next(failed, None)
                gap = "\n" if shown or parts else ""  # a blank line between days, none on top
                if day_index is None:
                    parts.append((f"{gap}outside any day\n", "bold"))
                else:
                    mark = "" if status == DayStatus.COMMITTED else f"  [{status}]"
                    parts.append((f"{gap}day {day_index}  {date}{mark}\n", "bold"))
            style = "strike" if status == DayStatus.REVERTED else ""
            level = 0
            if entry.parent_id is not None:
                level = depth.get(entry.parent_id, digests.get(entry.parent_id, -1)) + 1
            depth[entry.id] = level
            if entry.kind == EntryKind.DIGEST:
                digests[entry.id] = level
            pad = "  " * level
            title = f"{pad}#{entry.seq} {entry.kind}{_marks(entry)} · {safe_text(entry.title)}"
            parts.append((title + "\n", style + " cyan"))
            parts.append((textwrap.indent(safe_text(entry.body), pad) + "\n", style))
        if parts:
            a.out.print(Text.assemble(*parts), end="")
        shown += len(page)
        if len(page) < BATCH:
            break
        after = page[-1].entry.seq
    while pending is not None:  # failed tries after the last day with entries
        a.out.print(Text.assemble(_failed_line(*pending, gap=bool(shown))), end="")
        shown += 1
        pending = next(failed, None)
    if not shown:
        a.err.print("no entries yet")


def _failed_tries(
    database: Database, run_id: str, day: int | None
) -> Iterator[tuple[int, int, str | None]]:
    """The run's failed tries (day ``day``'s alone, if given) as ``(index, attempts,
    error)``, by index, then in the order tried: a page at a time, each page read in a
    transaction of its own."""
    after = (0, 0) if day is None else (day, 0)
    while True:
        with database.read() as session:
            page = Store(session).failed_page(run_id, after, limit=BATCH)
        for tried in page:
            if day is not None and tried.index != day:
                return
            yield tried.index, tried.attempts, tried.error
        if len(page) < BATCH:
            return
        after = (page[-1].index, page[-1].id)


def _failed_line(index: int, attempts: int, error: str | None, *, gap: bool) -> tuple[str, str]:
    """A failed try's line in ``record show``, after a blank line if ``gap``."""
    blank = "\n" if gap else ""
    return f"{blank}day {index}  {safe_text(failure(attempts, error))}\n", "red"


def _marks(entry: EntryRow) -> str:
    """What an amplification entry carries, and who wrote it if not the researcher."""
    marks = entry_marks(entry)
    if entry.author != "researcher":
        marks.append(f"by {entry.author}")
    return f" [{'; '.join(marks)}]" if marks else ""


@app.command("amend-digest")
def record_amend_digest(
    ctx: typer.Context,
    run_ref: RunArg,
    seq: Annotated[
        int,
        typer.Argument(min=1, max=ID_MAX, help="The digest's entry number (#N in record show)."),
    ],
    body: Annotated[str, typer.Option("--body", help="Your version of the digest.")],
) -> None:
    """Replace a digest with your own version. The original stays in the chain; yours
    covers the same days and is what the researcher reads from now on."""
    text = " ".join(body.split())
    if len(text) < 20:
        raise typer.BadParameter("give at least 20 characters", param_hint="--body")
    a = app_context(ctx)
    with a.open_db().write() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        entry = store.amend_digest(run.id, seq, text)
        a.err.print(
            f"digest #{seq} amended as #{entry.seq} (days {entry.first_day}-{entry.last_day})"
        )


@app.command("verify")
def record_verify(ctx: typer.Context, run_ref: RunArg) -> None:
    """Recompute the hash chain (HMAC-SHA256 under LOOPSIM_CHAIN_KEY for a keyed run);
    name the first broken link and exit 1 if any."""
    a = app_context(ctx)
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        result = store.verify_chain(run.id)
        key_held = store.chain_key is not None
        proof = store.prove_prefix(run) if result.ok else None
        emptied = store.emptied_day(run.id) if result.ok else None
    if result.needs_key:
        raise RecordBroken(f"run {run.id}: {KEYED_HINT} to verify it")
    if not result.ok:
        assert result.broken is not None
        raise RecordBroken(
            f"run {run.id}: broken link at {result.broken.describe()}; "
            f"{plural(result.checked, 'entry', 'entries')} before it verify"
        )
    if emptied is not None:
        raise RecordBroken(f"run {run.id}: {emptied_text(emptied)}")
    entries = plural(result.checked, "entry", "entries")
    kind = ", keyed (HMAC-SHA256)" if result.keyed else ""
    if proof is not None and not proof.ok:
        raise RecordBroken(
            f"run {run.id}: its prefix is not run {proof.parent_id}'s through day "
            f"{proof.fork_day}: {proof.reason}"
        )
    a.out.print(f"ok: run {run.id}, {entries}, head {result.head[:16]}{kind}")
    if proof is not None:
        copied = plural(proof.entries, "entry", "entries")
        a.out.print(
            f"fork of run {proof.parent_id} at day {proof.fork_day}: its first {copied} "
            + (
                f"equal the parent's, head {proof.head[:16]}"
                if proof.parent_found
                else f"end in the head recorded at the fork, {proof.head[:16]} "
                "(the parent was deleted)"
            ),
            soft_wrap=True,
        )
    if key_held and not result.keyed and result.checked:
        a.err.print(
            f"note: run {run.id}'s chain is plain SHA-256, not keyed (it was started "
            "without LOOPSIM_CHAIN_KEY): anyone who can write the database could rewrite it",
            soft_wrap=True,
        )


SNIPPET_CHARS = 160


def _first_match(text: str, terms: list[str]) -> int:
    """Where the first of ``terms`` starts in ``text``, or -1. Full-text search stems
    words ("foraging" finds "forage"), so a term not found whole is looked for by its
    first letters."""
    for words in (terms, [t[: max(4, len(t) - 3)] for t in terms]):
        alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
        found = re.search(rf"(?<![^\W_])(?:{alternatives})", text, re.IGNORECASE)
        if found:
            return found.start()
    return -1


def snippet(body: str, terms: list[str], width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``body`` around its first matching term, on one line
    and with control characters (terminal escapes included) removed."""
    text = " ".join(safe_text(body).split())
    if len(text) <= width:
        return text
    at = max(0, _first_match(text, terms))
    start = max(0, min(at - width // 3, len(text) - width))
    end = start + width
    if start > 0:  # begin and end on word boundaries where one is near
        space = text.find(" ", start, at)
        start = space + 1 if space != -1 and space - start < 20 else start
    if end < len(text):
        space = text.rfind(" ", max(at, end - 20), end)
        end = space if space != -1 else end
    return ("…" if start > 0 else "") + text[start:end] + ("…" if end < len(text) else "")


def _match_pattern(terms: list[str]) -> re.Pattern[str]:
    """Where a term matches, as full-text search matches it: a whole word, or for a term
    of 5 or more letters a word that begins with its stem ("foraging" finds "forage")."""
    alternatives = []
    for term in sorted(terms, key=len, reverse=True):
        if len(term) < 5:
            alternatives.append(re.escape(term) + r"s?(?![^\W_])")
        else:
            alternatives.append(re.escape(term[: max(4, len(term) - 3)]) + r"[^\W_]*")
    return re.compile(rf"(?<![^\W_])(?:{'|'.join(alternatives)})", re.IGNORECASE)


def marked(text: str, terms: list[str], *, bold: bool, style: str = "") -> Text:
    """``text`` with the words that matched marked: bold on a terminal, and ``**word**``
    in plain output (a pipe or a file), where bold would not show."""
    out = Text(style=style)
    at = 0
    for found in _match_pattern(terms).finditer(text):
        out.append(text[at : found.start()])
        if bold:
            out.append(found.group(), style="bold")
        else:
            out.append(f"**{found.group()}**")
        at = found.end()
    out.append(text[at:])
    return out


@app.command("search")
def record_search(
    ctx: typer.Context,
    run_ref: RunArg,
    query: Annotated[str, typer.Argument(help="Words to look for; any of them may match.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most hits to show.")] = 20,
) -> None:
    """Full-text search over a run's whole record, best matches first. Reverted days are
    searched too, and marked."""
    terms = search_terms(query)
    if not terms:
        raise SpecError(
            "the query has no words to search for: words of 3 or more letters count (and "
            "of 2 in capitals, such as KL), except common ones such as 'the' or 'with'"
        )
    a = app_context(ctx)
    dropped = dropped_words(query)
    if dropped:
        shown = ", ".join(repr(w if len(w) <= 40 else w[:39] + "…") for w in dropped[:10])
        more = f" and {len(dropped) - 10} more" if len(dropped) > 10 else ""
        a.err.print(
            Text(f"left out of the search, too short or too common: {shown}{more}"),
            soft_wrap=True,
        )
    every = search_terms(query, limit=len(query))
    if len(every) > len(terms):
        a.err.print(
            f"searching the first {len(terms)} of the query's {len(every)} words", soft_wrap=True
        )
    with a.open_db().read() as session:
        store = Store(session)
        run = store.get_run(run_ref)
        hits = store.search(run.id, query, include_reverted=True, limit=limit)
        rows: list[dict[str, Any]] = [
            {
                "day": day_index,
                "external_date": entry.external_date.isoformat(),
                "kind": " ".join(safe_text(entry.kind).split()),
                "seq": entry.seq,
                "title": " ".join(safe_text(entry.title).split()),
                "snippet": snippet(entry.body, terms),
                "reverted": status == DayStatus.REVERTED,
                "day_status": status,
            }
            for entry, day_index, status in hits
        ]
    if not rows:
        shown = " ".join(term if len(term) <= 40 else term[:39] + "…" for term in terms)
        if len(shown) > 200:
            shown = shown[:199] + "…"
        a.err.print(Text(f"no matches for {shown} in run {run.id}"), soft_wrap=True)
    if as_json:
        a.print_json(rows)
        return
    for row in rows:
        day = "-" if row["day"] is None else row["day"]
        head = f"day {day}  {row['external_date']}  {row['kind']}  #{row['seq']}  "
        style = "strike" if row["reverted"] else ""
        line = Text(head, style=style + " cyan")
        # The title is marked too: a hit found by its title alone shows why it matched.
        line.append_text(marked(row["title"], terms, bold=a.out.is_terminal, style=style + " cyan"))
        if row["reverted"]:
            line.append("  [reverted]", style="yellow")
        a.out.print(line)
        a.out.print(marked("    " + row["snippet"], terms, bold=a.out.is_terminal, style=style))
