"""The HTML report: one self-contained page for a person to read a run.

The page holds the run's header and the result of verifying its hash chain, a timeline
of days, each day's entries grouped by kind (replies nested under their parents), the
check-ins with their probe pairs, and a drift chart drawn as inline SVG. It needs no
network and runs no JavaScript: the CSS is inline, the chart is built here, and a
Content-Security-Policy meta tag forbids everything else as defence in depth.

Everything from the record is hostile model text (titles, bodies, errors, and the human's
notes and answers too). It is stripped of control characters and reaches the page only
through autoescaped template variables. The one piece of markup marked safe is the SVG
chart, which this module builds from numbers and escapes every text it puts inside.
Predictions stay hidden until the human's blind answer is stored, as in every export.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from loopsim.checkin import drift
from loopsim.exports.compare import Comparison
from loopsim.exports.markdown import HIDDEN, checkin_record, entry_marks, safe_text
from loopsim.record.store import Store, VerifyResult
from loopsim.record.streams import DayRow, EntryRow
from loopsim.record.tables import Run
from loopsim.schemas import DayStatus, RunSpec

# Deeper replies are drawn at this depth, each naming the entry it answers, so a hostile
# chain of replies cannot nest the page (or the template's recursion) without bound.
MAX_DEPTH = 6
ERROR_PREVIEW = 160
_CLASS_SAFE = re.compile(r"[^a-z0-9_-]")


@functools.cache
def environment() -> Environment:
    """The report's Jinja2 environment, built on first use: autoescape on for every
    template, and an undefined variable is an error rather than an empty string."""
    env = Environment(
        loader=PackageLoader("loopsim", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["cls"] = css_class
    return env


def text(value: str | None) -> str:
    """Untrusted text with control characters dropped; escaping is the template's job."""
    return safe_text(value or "")


def css_class(value: str) -> str:
    """A value from the record turned into a harmless CSS class name."""
    return _CLASS_SAFE.sub("-", value.lower())[:40] or "other"


# ------------------------------------------------------------------------- view model


@dataclass
class EntryNode:
    seq: int
    kind: str
    kind_class: str
    author: str
    title: str
    body: str
    external_date: str
    meta: list[str]
    flagged: bool = False
    reply_to: int | None = None  # the parent's seq, when it is not drawn just above
    children: list[EntryNode] = field(default_factory=list)


@dataclass(frozen=True)
class KindGroup:
    kind: str
    entries: list[EntryNode]


@dataclass(frozen=True)
class DayView:
    index: int
    date: str
    status: str
    error: str | None
    error_preview: str | None
    model_version: str
    attempts: int
    tokens_in: int
    tokens_out: int
    latency_ms: int
    entry_count: int
    hidden: bool  # reverted, and its entries left out
    groups: list[KindGroup]
    anchor: str  # see day_anchors


@dataclass(frozen=True)
class PairView:
    question: str
    human_answer: str | None
    prediction: str | None
    rating: int | None
    similarity: str | None
    is_retest: bool
    calibrated: str | None = None  # the similarity between chance and ceiling
    chance: str | None = None
    ceiling: str | None = None
    judge: int | None = None


@dataclass(frozen=True)
class CheckinView:
    id: int
    reason: str
    detail: str | None
    first_day: int
    last_day: int
    opened_at: str
    decision: str | None
    decided_at: str | None
    note: str | None
    drift_score: str | None
    level: str
    pairs: list[PairView]
    trend: str | None = None
    agreement: str | None = None
    retest_ceiling: str | None = None  # the human's own mean retest similarity
    without_answers: bool = False  # decided with probes unanswered (--skip-probes)


def _node(entry: EntryRow) -> EntryNode:
    kind = text(entry.kind)
    return EntryNode(
        seq=entry.seq,
        kind=kind,
        kind_class=css_class(kind),
        author=text(entry.author),
        title=text(entry.title),
        body=text(entry.body),
        external_date=entry.external_date.isoformat(),
        meta=entry_marks(entry, typeset=True),
        flagged=bool(entry.flagged),
    )


def entry_tree(entries: Sequence[EntryRow]) -> list[KindGroup]:
    """Entries (in chain order) as trees by ``parent_id``, roots grouped by kind in the
    order each kind first appears. A reply whose parent is not among ``entries`` is a
    root that names its parent's seq."""
    nodes: dict[int, EntryNode] = {}
    depth: dict[int, int] = {}
    parent_of: dict[int, int] = {}
    roots: list[EntryNode] = []
    for entry in entries:
        node = nodes[entry.id] = _node(entry)
        parent = entry.parent_id
        # A parent always comes earlier in the chain; anything else is ignored, so a
        # tampered record cannot make a cycle.
        if parent is not None and parent in nodes and nodes[parent].seq < entry.seq:
            host = parent
            while depth[host] >= MAX_DEPTH:
                host = parent_of[host]
            if host != parent:
                node.reply_to = nodes[parent].seq
            nodes[host].children.append(node)
            parent_of[entry.id] = host
            depth[entry.id] = depth[host] + 1
        else:
            if parent is not None:
                node.reply_to = entry.parent_seq
            roots.append(node)
            depth[entry.id] = 0
    groups: dict[str, list[EntryNode]] = {}
    for root in roots:
        groups.setdefault(root.kind, []).append(root)
    return [KindGroup(kind, members) for kind, members in groups.items()]


def day_anchors(days: Sequence[DayRow]) -> list[str]:
    """Each day's page anchor: ``day-N`` for the day that holds index N (else for the
    first try of it), and ``day-N-try-ID`` for the other, failed, tries of it."""
    named: dict[int, int] = {}
    for day in days:
        if day.status != DayStatus.FAILED or day.index not in named:
            named[day.index] = day.id
    return [
        f"day-{d.index}" if named[d.index] == d.id else f"day-{d.index}-try-{d.id}" for d in days
    ]


def _day_view(day: DayRow, entry_count: int, hidden: bool, anchor: str) -> DayView:
    """A day's line in the timeline; its card adds the entries (:func:`html_chunks`)."""
    error = text(day.error) if day.status == DayStatus.FAILED else None
    preview = None
    if error is not None:
        flat = " ".join(error.split())
        preview = flat if len(flat) <= ERROR_PREVIEW else flat[: ERROR_PREVIEW - 1] + "\u2026"
    return DayView(
        index=day.index,
        date=day.external_date.isoformat(),
        status=text(day.status),
        error=error,
        error_preview=preview,
        model_version=text(day.model_version),
        attempts=day.attempts or 0,
        tokens_in=day.tokens_in or 0,
        tokens_out=day.tokens_out or 0,
        latency_ms=day.latency_ms or 0,
        entry_count=entry_count,
        hidden=hidden,
        groups=[],
        anchor=anchor,
    )


def _level(score: float | None, warn: float, alarm: float) -> str:
    return drift.classify(score, None, warn, alarm).level


def _checkin_views(
    store: Store, run: Run, warn: float, alarm: float
) -> tuple[list[CheckinView], list[tuple[int, int, float]]]:
    views: list[CheckinView] = []
    points: list[tuple[int, int, float]] = []  # (check-in id, last day, score)
    for c in store.list_checkins(run.id):
        record = checkin_record(store, c)  # predictions already hidden where unanswered
        score = record["drift_score"]
        if score is not None:
            points.append((c.id, c.last_day_index, float(score)))
        views.append(
            CheckinView(
                id=c.id,
                reason=text(record["reason"]),
                detail=text(record["detail"]) if record["detail"] else None,
                first_day=record["first_day"],
                last_day=record["last_day"],
                opened_at=record["opened_at"][:16].replace("T", " "),
                decision=text(record["decision"]) if record["decision"] else None,
                decided_at=(
                    record["decided_at"][:16].replace("T", " ") if record["decided_at"] else None
                ),
                note=text(record["note"]) if record["note"] else None,
                drift_score=None if score is None else f"{score:.2f}",
                level=_level(score, warn, alarm),
                pairs=[_pair_view(p) for p in record["pairs"]],
                trend=_figure(record["drift_trend"]),
                agreement=_figure(record["agreement"]),
                retest_ceiling=_figure(record["ceiling"]),
                without_answers=bool(record["decided_without_answers"]),
            )
        )
    return views, points


def _pair_view(pair: dict[str, Any]) -> PairView:
    answer, prediction = pair["human_answer"], pair["prediction"]
    # checkin_record already hides a prediction without a stored answer; hold the line
    # here too, so no later change there can spoil a pending check-in.
    if answer is None:
        prediction = None
    similarity = pair["similarity"]
    return PairView(
        question=text(pair["question"]),
        human_answer=None if answer is None else text(answer),
        prediction=None if prediction is None else text(prediction),
        rating=pair["rating"],
        similarity=None if similarity is None else f"{similarity:.2f}",
        is_retest=bool(pair["is_retest"]),
        calibrated=_figure(pair["agreement"]),
        chance=_figure(pair["null_level"]),
        ceiling=_figure(pair["ceiling"]),
        judge=pair["judge_rating"],
    )


def _figure(value: float | None) -> str | None:
    return None if value is None else f"{value:.2f}"


# ------------------------------------------------------------------------- drift chart

_W, _H = 480, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 46, 80, 14, 44


def _ticks(top: int, most: int = 8) -> list[int]:
    step = 1
    for candidate in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = candidate
        if top / candidate <= most:
            break
    else:
        step = math.ceil(top / most)
    return list(range(0, top + 1, step))


def _f(value: float) -> str:
    return f"{value:.1f}"


def drift_chart(
    points: Sequence[tuple[int, int, float]], warn: float, alarm: float, last_day: int = 1
) -> Markup:
    """Drift score per check-in against the last day it covers, on an axis to
    ``last_day`` (or the last point), with the warn and alarm thresholds as labelled
    lines and the EWMA trend dashed. Pure SVG built from numbers; every text is escaped."""
    last = max([day for _n, day, _s in points] + [last_day, 1])
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(day: float) -> float:
        return _LEFT + plot_w * day / last

    def y(score: float) -> float:
        return _TOP + plot_h * (1 - max(0.0, min(1.0, score)))

    out: list[str] = []
    summary = "; ".join(f"check-in {n}, day {d}: {s:.2f}" for n, d, s in points)
    out.append(
        f'<svg id="drift-chart" class="chart" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-labelledby="drift-chart-title drift-chart-desc" '
        f'xmlns="http://www.w3.org/2000/svg">'
    )
    out.append('<title id="drift-chart-title">Drift score per check-in</title>')
    out.append(
        f'<desc id="drift-chart-desc">{escape(summary)}; warn at {warn:.2f}, '
        f"alarm at {alarm:.2f}</desc>"
    )
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" '
            f'y1="{_f(y(tick))}" y2="{_f(y(tick))}"/>'
        )
        out.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{_f(y(tick) + 4)}" '
            f'text-anchor="end">{tick:.2f}</text>'
        )
    for day in _ticks(last):
        out.append(
            f'<line class="tick-mark" x1="{_f(x(day))}" x2="{_f(x(day))}" '
            f'y1="{_TOP + plot_h}" y2="{_TOP + plot_h + 4}"/>'
        )
        out.append(
            f'<text class="tick" x="{_f(x(day))}" y="{_TOP + plot_h + 17}" '
            f'text-anchor="middle">{day}</text>'
        )
    out.append(
        f'<line class="axis" x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + plot_h}"/>'
        f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" '
        f'y1="{_TOP + plot_h}" y2="{_TOP + plot_h}"/>'
    )
    out.append(
        f'<text class="axis-label" x="{_LEFT + plot_w / 2:.1f}" y="{_H - 6}" '
        f'text-anchor="middle">last day covered by the check-in</text>'
    )
    out.append(
        f'<text class="axis-label" transform="translate(14 {_TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">drift score</text>'
    )
    # Labels sit on their lines; when the thresholds nearly meet, the higher one's label
    # moves above its line and the lower one's below, so they never overlap.
    close = abs(warn - alarm) < 0.07
    for name, value, other in (("warn", warn, alarm), ("alarm", alarm, warn)):
        above = value > other or (value == other and name == "alarm")
        nudge = 4.0 if not close else (-4.0 if above else 14.0)
        out.append(
            f'<line class="threshold threshold-{name}" data-threshold="{name}" '
            f'x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_f(y(value))}" y2="{_f(y(value))}"/>'
        )
        out.append(
            f'<text class="threshold-label threshold-{name}" x="{_W - _RIGHT + 6}" '
            f'y="{_f(y(value) + nudge)}">{escape(name)} {value:.2f}</text>'
        )
    if points:
        trend: list[str] = []
        scores: list[float] = []
        for _n, day, score in points:
            scores.append(score)
            smoothed = drift.ewma(scores)
            assert smoothed is not None
            trend.append(f"{_f(x(day))},{_f(y(smoothed))}")
        out.append(f'<polyline class="trend" points="{" ".join(trend)}"/>')
        line = " ".join(f"{_f(x(day))},{_f(y(score))}" for _n, day, score in points)
        out.append(f'<polyline class="series" points="{line}"/>')
        for checkin_id, day, score in points:
            level = _level(score, warn, alarm)
            label = f"check-in {checkin_id}, days up to {day}: drift {score:.2f} ({level})"
            out.append(
                f'<circle class="point level-{css_class(level)}" cx="{_f(x(day))}" '
                f'cy="{_f(y(score))}" r="5"><title>{escape(label)}</title></circle>'
            )
    out.append("</svg>")
    return Markup("\n".join(out))


# ------------------------------------------------------------------------------ render


def _chain(result: VerifyResult) -> dict[str, Any]:
    return {
        "ok": result.ok,
        "checked": result.checked,
        "head": result.head[:16],
        "broken": None if result.broken is None else text(result.broken.describe()),
    }


def to_html(
    store: Store, run: Run, *, include_reverted: bool = False, comparison: Comparison | None = None
) -> str:
    """The run as one self-contained HTML page (:func:`html_chunks`, joined)."""
    return "".join(
        html_chunks(store, run, include_reverted=include_reverted, comparison=comparison)
    )


def html_chunks(
    store: Store, run: Run, *, include_reverted: bool = False, comparison: Comparison | None = None
) -> Iterator[str]:
    """The run as one self-contained HTML page, rendered as the days' entries are read.
    Reverted days always appear in the timeline, struck through; their entries only with
    ``include_reverted``. A ``comparison`` (a fork's with its parent) is drawn as a
    section of its own. The timeline holds a line a day; the entries are read a batch at
    a time as the days' cards are written (:mod:`loopsim.record.streams`)."""
    spec = RunSpec.model_validate(run.spec)
    warn, alarm = spec.checkins.drift_warn, spec.checkins.drift_alarm
    counted = store.days_with_counts(run.id)
    listed = [day for day, _count in counted]
    days = [
        _day_view(day, count, day.status == DayStatus.REVERTED and not include_reverted, anchor)
        for (day, count), anchor in zip(counted, day_anchors(listed), strict=True)
    ]
    outside = store.outside_entries(run.id)

    def cards() -> Iterator[DayView]:
        streamed = store.days_with_entries(run.id, include_reverted=True)
        for view, (_day, entries) in zip(days, streamed, strict=True):
            yield view if view.hidden else dataclasses.replace(view, groups=entry_tree(entries))

    checkins, points = _checkin_views(store, run, warn, alarm)
    closes: dict[int, list[CheckinView]] = {}
    for view in checkins:
        closes.setdefault(view.last_day, []).append(view)
    counts = {status.value: sum(d.status == status for d in days) for status in DayStatus}
    tokens_in, tokens_out = store.token_totals(run.id)
    context = {
        "run": {
            "id": run.id,
            "name": text(run.name),
            "status": text(run.status),
            "status_reason": text(run.status_reason) if run.status_reason else None,
            "model": text(run.model),
            "created_at": run.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            "parent": run.parent_run_id,
            "fork_day": run.fork_day,
        },
        "persona": {
            "name": text(spec.persona.name),
            "background": text(spec.persona.background),
        },
        "charter": {
            "agenda": text(spec.charter.agenda),
            "open_questions": [text(q) for q in spec.charter.open_questions],
        },
        "chain": _chain(store.verify_chain(run.id)),
        "days": days,
        "cards": cards(),
        "counts": counts,
        "entry_total": sum(count for _day, count in counted) + len(outside),
        "tokens_in": tokens_in,
        "tokens_out": tokens_out,
        "include_reverted": include_reverted,
        "outside": entry_tree(outside),
        "checkins": checkins,
        "closes": closes,
        "chart": (
            drift_chart(points, warn, alarm, max([d.index for d in days] + [1])) if points else None
        ),
        "warn": f"{warn:.2f}",
        "alarm": f"{alarm:.2f}",
        "hidden_prediction": HIDDEN,
        "comparison": comparison.to_dict() if comparison is not None else None,
    }
    return environment().get_template("report.html.j2").generate(context)
