"""Exports of a run's record: Markdown for people, JSONL for programs.

Everything in an entry was written by a model and is treated as hostile:

- Markdown: entry text is HTML-escaped and every line is quoted, so it cannot open a
  heading, a code fence, a raw HTML block or a link reference outside its quote.
- JSONL: one JSON object a line, schema ``loopsim.export/1`` (see ``docs/export.md``).

Reverted days are left out unless ``include_reverted`` is given (Markdown names each
stretch of them where it stood, :mod:`loopsim.exports.reverted`); failed tries of a day are
shown at the index they tried, with their error in Markdown and as ``day`` records in JSONL.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from loopsim.errors import LoopsimError, SpecError
from loopsim.exports.reverted import Stretch, in_place, left_out, reverted_stretches
from loopsim.record.leases import driver
from loopsim.record.runs import spec_hash
from loopsim.record.store import Store
from loopsim.record.streams import EntryRow
from loopsim.record.tables import CheckIn, ProbePair, Run
from loopsim.schemas import DayStatus
from loopsim.text import failure, names_a_folder, plural
from loopsim.text import inert_json as inert_json  # re-exported: the CLI imports it here
from loopsim.text import safe_text as safe_text  # re-exported: the CLI imports it here

SCHEMA = "loopsim.export/1"


def md_inline(text: str) -> str:
    """One line of untrusted text, safe inside Markdown prose."""
    flat = " ".join(safe_text(text).split())
    escaped = html.escape(flat, quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", escaped)


def md_code(text: str) -> str:
    """An identifier (a model id, a version string) as a Markdown code span: shown as
    written, with no backslash escapes, and nothing in it is read as Markdown or HTML."""
    flat = " ".join(safe_text(text).split()) or "-"
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def run_state(store: Store, run: Run) -> str:
    """The run's status as it stands: why, what drives it, and how far its days got."""
    parts = [str(run.status)]
    if run.status_reason:
        parts.append(f"({md_inline(run.status_reason)})")
    days = store.count_days(run.id, DayStatus.COMMITTED)
    budget = run.spec.get("budget", {}).get("days")
    counted = f"{days} of {budget} days committed" if budget else f"{plural(days, 'day')} committed"
    drives = driver(store, run)
    if drives is not None:
        counted += f"; driven by {md_code(drives)}"
    return f"{' '.join(parts)}; {counted}"


def md_block(text: str) -> str:
    """Untrusted multi-line text as a Markdown block quote it cannot break out of."""
    lines = html.escape(safe_text(text), quote=False).split("\n")
    return "\n".join("> " + re.sub(r"([\\`*_{}\[\]#+!|~-])", r"\\\1", line) for line in lines)


def to_markdown(store: Store, run: Run, *, include_reverted: bool = False) -> str:
    """The run's record as one Markdown document (:func:`markdown_chunks`, joined)."""
    return "".join(markdown_chunks(store, run, include_reverted=include_reverted))


def markdown_chunks(store: Store, run: Run, *, include_reverted: bool = False) -> Iterator[str]:
    """The Markdown document in pieces, a day at a time, read as it is written: memory
    stays flat however long the record (:mod:`loopsim.record.streams`)."""
    return _rstripped(_markdown_parts(store, run, include_reverted))


def _markdown_parts(store: Store, run: Run, include_reverted: bool) -> Iterator[str]:
    spec = run.spec
    head = [
        f"# loopsim run {md_inline(run.name)}: {md_inline(spec['persona']['name'])}",
        "",
        f"- run: {md_code(run.id)}",
        f"- status: {run_state(store, run)}",
        f"- model: {md_code(run.model)}",
        f"- persona: {md_inline(spec['persona']['name'])}",
        *(
            [f"- forked from: run {md_code(run.parent_run_id)} at day {run.fork_day}"]
            if run.parent_run_id
            else []
        ),
        "",
        "## Charter",
        "",
        md_block(spec["charter"]["agenda"]),
        "",
    ]
    yield _lines(head)
    # Reverted days left out are named where they stood, and the failed tries of their
    # indexes go with them: those were tries of days the check-in rejected.
    stretches = [] if include_reverted else reverted_stretches(store, run.id)
    days = store.days_with_entries(run.id, include_reverted=include_reverted)
    for item in in_place(days, stretches):
        if isinstance(item, Stretch):
            yield _lines([f"## {left_out(item)}", ""])
            continue
        day, entries = item
        label = {DayStatus.COMMITTED: "", DayStatus.FAILED: " (a failed try)"}.get(
            DayStatus(day.status), f" ({day.status})"
        )
        out = [f"## Day {day.index}: {day.external_date.isoformat()}{label}", ""]
        out.append(
            f"*model {md_code(day.model_version or '')}, {day.latency_ms or 0} ms, "
            f"{day.tokens_in or 0} tokens in, {day.tokens_out or 0} out*"
        )
        out.append("")
        if day.status == DayStatus.FAILED:
            said = failure(day.attempts or 0, day.error)
            out += [md_inline(said[:1].upper() + said[1:]), ""]
        for entry in entries:
            out += [_entry_heading(entry), "", md_block(entry.body), ""]
        yield _lines(out)
    checkins = store.list_checkins(run.id)
    if checkins:
        yield _lines(["## Check-ins", ""])
        for c in checkins:
            yield _lines(_checkin_md(store, c))
    outside = store.outside_entries(run.id)
    if outside:
        yield _lines(["## Entries outside any day", ""])
        for entry in outside:
            yield _lines(
                [
                    f"### {entry.kind} by {entry.author}, {entry.external_date.isoformat()}: "
                    f"{md_inline(entry.title)}",
                    "",
                    md_block(entry.body),
                    "",
                ]
            )


def _lines(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _rstripped(chunks: Iterable[str]) -> Iterator[str]:
    """The chunks' text with its trailing whitespace replaced by one newline, as
    ``text.rstrip() + "\\n"`` would give, without holding more than the whitespace that
    might be the end."""
    held = ""
    for chunk in chunks:
        body = chunk.rstrip()
        if body:
            yield held + body
            held = chunk[len(body) :]
        else:
            held += chunk
    yield "\n"


class Marked(Protocol):
    """What :func:`entry_marks` reads of an entry (an ORM row or a streamed one)."""

    @property
    def level(self) -> int | None: ...
    @property
    def first_day(self) -> int | None: ...
    @property
    def last_day(self) -> int | None: ...
    @property
    def score(self) -> int | None: ...
    @property
    def flagged(self) -> bool | None: ...


def entry_marks(entry: Marked, *, typeset: bool = False) -> list[str]:
    """What an amplification entry carries: a digest's level and days, a critic's score,
    an idea's flag. Every rendering of an entry takes its marks from here.

    Plain (Markdown, the terminal) gives a digest's level and days as one mark,
    ``level 2, days 1-8``; ``typeset`` (the HTML report) gives them as two marks, and
    the days with an en dash.
    """
    marks = []
    if typeset:
        if entry.level is not None:
            marks.append(f"level {entry.level}")
        if entry.first_day is not None and entry.last_day is not None:
            marks.append(f"days {entry.first_day}\u2013{entry.last_day}")
    elif entry.level is not None:
        marks.append(f"level {entry.level}, days {entry.first_day}-{entry.last_day}")
    if entry.score is not None:
        marks.append(f"score {entry.score}/10")
    if entry.flagged:
        marks.append("flagged")
    return marks


def _entry_heading(entry: EntryRow) -> str:
    """``### #seq kind: title``, then what places the entry in its day's tree."""
    marks = []
    if entry.parent_seq is not None:
        marks.append(f"re #{entry.parent_seq}")
    marks += entry_marks(entry)
    tail = f" ({'; '.join(marks)})" if marks else ""
    return f"### #{entry.seq} {entry.kind}: {md_inline(entry.title)}{tail}"


HIDDEN = "(hidden until the human's blind answer is stored)"


def _prediction(pair: ProbePair) -> str | None:
    """Never reveal a prediction through an export before the blind answer exists."""
    return pair.prediction if pair.answered_at is not None else None


def _checkin_md(store: Store, c: CheckIn) -> list[str]:
    decision = c.decision or "pending"
    missing = _unanswered(store, c)
    if c.decision is not None and missing:
        decision += f" without answers ({missing} of {len(store.pairs(c.id))} probes unanswered)"
    score = "" if c.drift_score is None else f"; drift {c.drift_score:.2f}"
    if c.trend is not None:
        score += f" (trend {c.trend:.2f})"
    if c.agreement is not None:
        score += f", agreement {c.agreement:.2f}"
    if c.ceiling is not None:
        score += f", retest ceiling {c.ceiling:.2f}"
    lines = [
        f"### Check-in {c.id}: {c.reason}, days {c.first_day_index} to "
        f"{c.last_day_index}: {decision}{score}",
        "",
    ]
    if c.note:
        lines += [md_block(c.note), ""]
    for pair, probe in store.pairs(c.id):
        prediction = _prediction(pair)
        lines += [
            f"- probe: {md_inline(probe.question)}",
            f"  - human: {md_inline(pair.human_answer or '(not answered)')}",
            f"  - simulation: {md_inline(prediction) if prediction is not None else HIDDEN}",
        ]
        if pair.rating is not None or pair.similarity is not None:
            sim = "n/a" if pair.similarity is None else f"{pair.similarity:.2f}"
            figures = f"  - rating {pair.rating or 'n/a'}, similarity {sim}"
            if pair.agreement is not None and pair.null_level is not None:
                figures += (
                    f", calibrated {pair.agreement:.2f} (chance {pair.null_level:.2f}, "
                    f"ceiling {pair.ceiling or 0:.2f})"
                )
            if pair.judge_rating is not None:
                figures += f", judge {pair.judge_rating}"
            lines.append(figures)
    lines.append("")
    return lines


def _jsonl(record: dict[str, Any]) -> str:
    return inert_json({"schema": SCHEMA, **record}, sort_keys=True)


def to_jsonl(store: Store, run: Run, *, include_reverted: bool = False) -> Iterator[str]:
    spec = dict(run.spec)
    yield _jsonl(
        {
            "type": "run",
            "id": run.id,
            "name": run.name,
            "status": run.status,
            "model": run.model,
            "created_at": run.created_at.isoformat(),
            "spec": spec,
            "spec_hash": spec_hash(spec),
            "parent_run_id": run.parent_run_id,
            "fork_day": run.fork_day,
        }
    )
    # As in Markdown: each stretch of reverted days left out is one line where it stood,
    # and the failed tries of its indexes are left out with it.
    stretches = [] if include_reverted else reverted_stretches(store, run.id)
    days = store.days_with_entries(run.id, include_reverted=include_reverted)
    for item in in_place(days, stretches):
        if isinstance(item, Stretch):
            yield _reverted_record(run.id, item)
            continue
        day, entries = item
        yield _jsonl(
            {
                "type": "day",
                "run_id": run.id,
                "index": day.index,
                "external_date": day.external_date.isoformat(),
                "status": day.status,
                "model_id": day.model_id,
                "model_version": day.model_version,
                "prompt_hash": day.prompt_hash,
                "attempts": day.attempts,
                "tokens_in": day.tokens_in,
                "tokens_out": day.tokens_out,
                "latency_ms": day.latency_ms,
                "error": day.error,
            }
        )
        for entry in entries:
            yield _entry_record(entry, day.index, day.status)
    for entry in store.outside_entries(run.id):
        yield _entry_record(entry, None, None)
    for c in store.list_checkins(run.id):
        yield _jsonl({"type": "checkin", **checkin_record(store, c)})


def _reverted_record(run_id: str, stretch: Stretch) -> str:
    return _jsonl(
        {
            "type": "reverted",
            "run_id": run_id,
            "first_day": stretch.first,
            "last_day": stretch.last,
            "checkin_id": stretch.checkin,
            "failed_tries": stretch.failed,
        }
    )


def _unanswered(store: Store, c: CheckIn) -> int:
    return sum(1 for pair, _probe in store.pairs(c.id) if pair.human_answer is None)


def checkin_record(store: Store, c: CheckIn) -> dict[str, Any]:
    """A check-in and its probe pairs as plain data; predictions stay hidden until the
    human's blind answer is stored. ``unanswered`` counts probes with no human answer:
    on a decided check-in, ones it was decided without (``--skip-probes``)."""
    missing = _unanswered(store, c)
    return {
        "run_id": c.run_id,
        "id": c.id,
        "reason": c.reason,
        "detail": c.detail,
        "first_day": c.first_day_index,
        "last_day": c.last_day_index,
        "opened_at": c.opened_at.isoformat(),
        "decision": c.decision,
        "note": c.note,
        "decided_at": c.decided_at.isoformat() if c.decided_at else None,
        "drift_score": c.drift_score,
        "drift_trend": c.trend,
        "agreement": c.agreement,
        "ceiling": c.ceiling,
        "similarity_kind": c.similarity,
        "unanswered": missing,
        "decided_without_answers": c.decision is not None and missing > 0,
        "pairs": [
            {
                "probe_id": probe.id,
                "question": probe.question,
                "human_answer": pair.human_answer,
                "prediction": _prediction(pair),
                "rating": pair.rating,
                "similarity": pair.similarity,
                "agreement": pair.agreement,
                "null_level": pair.null_level,
                "ceiling": pair.ceiling,
                "judge_rating": pair.judge_rating,
                "judge_reason": pair.judge_reason,
                "is_retest": pair.is_retest,
            }
            for pair, probe in store.pairs(c.id)
        ],
    }


def _entry_record(entry: EntryRow, day_index: int | None, day_status: str | None) -> str:
    return _jsonl(
        {
            "type": "entry",
            "run_id": entry.run_id,
            "day_index": day_index,
            "day_status": day_status,
            "seq": entry.seq,
            "kind": entry.kind,
            "author": entry.author,
            "title": entry.title,
            "body": entry.body,
            "external_date": entry.external_date.isoformat(),
            "created_at": entry.created_at.isoformat(),
            "model_id": entry.model_id,
            "model_version": entry.model_version,
            "prompt_hash": entry.prompt_hash,
            "hash": entry.hash,
            "prev_hash": entry.prev_hash,
            "parent_id": entry.parent_id,
            "parent_seq": entry.parent_seq,
            "level": entry.level,
            "first_day": entry.first_day,
            "last_day": entry.last_day,
            "score": entry.score,
            "flagged": entry.flagged,
        }
    )


def batched_text(chunks: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """The chunks joined into blocks of about ``size`` characters: one write each."""
    block: list[str] = []
    held = 0
    for chunk in chunks:
        block.append(chunk)
        held += len(chunk)
        if held >= size:
            yield "".join(block)
            block, held = [], 0
    if block:
        yield "".join(block)


def check_output(given: str | Path, option: str = "-o") -> Path:
    """Refuse an output path no file can be written at (its folder missing, or a folder or
    device there), naming ``option``; returns the path a symlink points to. A command
    that works long before it writes checks first, so the work is not lost.

    ``given`` is best the text as typed: a ``Path`` drops a trailing ``/``, and
    ``out/new/`` names a folder, not a file ``new`` to be written in ``out``."""
    if names_a_folder(given):
        raise SpecError(
            f"{option} {given}: names a folder (it ends in {given[-1]}); "
            "give a file name, or - for stdout"
        )
    path = Path(given)
    try:
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        directory = path.parent if str(path.parent) else Path(".")
        if not directory.is_dir():
            raise SpecError(f"{option} {path}: folder {directory} does not exist")
        if path.exists() and not path.is_file():  # a folder, or a device such as /dev/null
            raise SpecError(
                f"{option} {path}: not a regular file; give a file name, or - for stdout"
            )
    except OSError as error:
        raise LoopsimError(f"cannot write {path}: {error.strerror or error}") from None
    return path


def write_atomically(path: str | Path, chunks: Iterable[str], option: str = "-o") -> None:
    """Write beside the target and rename over it, so a crash never leaves half a file.

    A symlink is written through (its target is replaced, the link kept), and the file
    keeps the mode it had, or gets the usual one for a new file (0666 less the umask),
    rather than the private mode of the temporary file. A failure is one line."""
    try:
        path = check_output(path, option)
        directory = path.parent if str(path.parent) else Path(".")
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    except OSError as error:
        raise LoopsimError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for chunk in batched_text(chunks):
                handle.write(chunk)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise LoopsimError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current
