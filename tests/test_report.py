"""The HTML report: a 20-day run full of hostile text, rendered and parsed back."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from markupsafe import escape
from sqlalchemy import text

from loopsim.checkin.answers import record_answer
from loopsim.checkin.decision import decide
from loopsim.config import Settings
from loopsim.exports.markdown import HIDDEN
from loopsim.exports.report import MAX_DEPTH, to_html
from loopsim.loop import Loop
from loopsim.record.db import Database
from loopsim.record.store import EntryInput, Store
from loopsim.record.tables import CheckIn, ProbePair, utcnow
from loopsim.schemas import Author, DayStatus, Decision, RunStatus, parse_spec
from loopsim.testing import add_day, amplified_reply, scripted_factory
from tests.conftest import SPEC, make_run

PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=1">',
    '<a href="javascript:window.__xss=1">click</a>',
    '<svg onload="window.__xss=1"><script>window.__xss=1</script></svg>',
    '"><iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    "</style><script>window.__xss=1</script>",
    "</title><script>window.__xss=1</script><!--",
    "'><body onload=window.__xss=1>",
    '<details open ontoggle="window.__xss=1;alert(1)">',
]
LONG_WORD = "Unbroken" * 60
DAYS = 20
REVERTED = {7, 8, 9}
FAILED_DAY = 14
WARN, ALARM = 0.3, 0.6
SECRET = "SECRET-PREDICTION-NOT-YET-ANSWERED"
SHOWN = "PREDICTION-SHOWN-AFTER-BLIND-ANSWER"
START = dt.date(2025, 6, 2)


def payload(n: int) -> str:
    return PAYLOADS[n % len(PAYLOADS)]


def spec_data() -> dict:
    data = json.loads(json.dumps(SPEC))
    data["persona"]["name"] = "Dr. " + payload(0)
    data["charter"]["agenda"] += "\n" + payload(1)
    data["charter"]["open_questions"].append("Can the record be trusted? " + payload(2))
    data["checkins"] = {
        "every_days": 3,
        "spot_check_probability": 0.0,
        "drift_warn": WARN,
        "drift_alarm": ALARM,
    }
    data["probes"] = [
        "What decides where a colony forages? " + payload(3),
        "What would you measure first?",
    ]
    return data


def _day_entries(store: Store, run_id: str, index: int) -> None:
    date = START + dt.timedelta(days=index - 1)
    day = add_day(
        store,
        run_id,
        index,
        [
            EntryInput("note", f"{payload(index)} note of day {index}", _body(index)),
            EntryInput("question", f"Question {index}", "Why? " + payload(index + 1)),
        ],
        date=date,
    )
    question = store.list_entries(run_id, day_index=index)[-1][0]
    (sub,) = store.append_entries(
        run_id,
        [
            EntryInput(
                "subquestion", f"Sub-question {index}.1", payload(index + 2), parent_id=question.id
            )
        ],
        day=day,
        external_date=date,
    )
    store.append_entries(
        run_id,
        [
            EntryInput("answer", f"Answer {index}.1.1", payload(index + 3), parent_id=sub.id),
            EntryInput("idea", f"Idea {index} " + payload(index + 4), LONG_WORD),
        ],
        day=day,
        external_date=date,
    )


def _body(index: int) -> str:
    return (
        f"Body of day {index}.\n{payload(index + 5)}\n"
        "a terminal escape \x1b[31mred\x1b[0m and a bell\x07 stay out"
    )


def _open(session, run_id: str, first: int, last: int, predictions: list[str]) -> int:
    """A check-in as the loop opens it: a row, its predictions, a waiting run."""
    store = Store(session)
    checkin = CheckIn(
        run_id=run_id,
        reason="scheduled",
        first_day_index=first,
        last_day_index=last,
        opened_at=utcnow(),
    )
    session.add(checkin)
    session.flush()
    for probe, prediction in zip(store.list_probes(run_id), predictions, strict=True):
        session.add(ProbePair(checkin_id=checkin.id, probe_id=probe.id, prediction=prediction))
    store.set_status(store.get_run(run_id), RunStatus.AWAITING_CHECKIN, "check-in")
    session.flush()
    return checkin.id


def seed_run(database: Database) -> str:
    """20 days (one failed, three reverted by a rejection), six decided check-ins with
    drift scores and one pending, and hostile text wherever a model or a human writes."""
    with database.write() as session:
        store = Store(session)
        run = store.create_run(
            parse_spec(spec_data()), name="Hostile " + payload(6), model="scripted:test"
        )
        run_id = run.id
        for index in range(1, DAYS + 1):
            if index == FAILED_DAY:
                date = START + dt.timedelta(days=index - 1)
                error = "reply failed validation: " + payload(index) + " " + LONG_WORD
                add_day(store, run_id, index, status=DayStatus.FAILED, date=date, error=error)
            else:
                _day_entries(store, run_id, index)
        probes = [p.id for p in store.list_probes(run_id)]
    # (days, predictions, decision, answers, rating, note)
    plan = [
        ((1, 3), ["Bees follow the longest dances.", "Distance first."], Decision.APPROVE,
         ["Bees follow the longest dances.", "Distance first."], 5, None),
        ((4, 6), ["Nectar quality.", "Colony size."], Decision.AMEND,
         ["Dance length " + payload(1), "Marked foragers " + payload(2)], 3,
         "Count marked foragers only. " + payload(5)),
        ((7, 9), ["Rocket engines.", "Orbital mechanics."], Decision.REJECT,
         ["Bees, not rockets " + payload(0), "Bees " + payload(4)], 2, None),
        ((10, 12), ["Rockets again.", "Thrust."], Decision.APPROVE,
         ["Pollen loads " + payload(3), "Weather " + payload(7)], 1, None),
        ((13, 15), ["Dances and distance.", "Distance."], Decision.APPROVE,
         ["Dances and distance matter.", "Distance."], 4, None),
        ((16, 18), ["Forager counts.", "Counts."], Decision.APPROVE,
         ["Forager counts.", "Counts per hour."], 4, None),
    ]  # fmt: skip
    for (first, last), predictions, decision, answers, rating, note in plan:
        with database.write() as session:
            checkin_id = _open(session, run_id, first, last, predictions)
        given = {p: {"answer": a, "rating": rating} for p, a in zip(probes, answers, strict=True)}
        decide(database, checkin_id, decision, note=note, answers=given)
    with database.write() as session:
        pending = _open(session, run_id, 19, 20, [SHOWN, SECRET])
        Store(session).get_checkin(pending).detail = "opened by hand " + payload(3)
        first_pair = Store(session).pairs(pending)[0][0].id
    record_answer(database, first_pair, "My blind answer " + payload(0))
    return run_id


@pytest.fixture
def seeded(database: Database) -> tuple[Database, str]:
    return database, seed_run(database)


def render(database: Database, run_id: str, **options: bool) -> str:
    with database.read() as session:
        store = Store(session)
        return to_html(store, store.get_run(run_id), **options)


# ------------------------------------------------------------------ a tiny DOM


VOID = {"meta", "link", "br", "hr", "img", "input", "area", "base", "col", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = field(default=None, repr=False)
    content: list[Node | str] = field(default_factory=list, repr=False)

    @property
    def children(self) -> list[Node]:
        return [c for c in self.content if isinstance(c, Node)]

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, tag: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.walk()
            if (tag is None or n.tag == tag) and all(n.attrs.get(k) == v for k, v in attrs.items())
        ]

    def by_id(self, value: str) -> Node:
        (found,) = self.find(id=value)
        return found

    def all_text(self) -> str:
        return "".join(c if isinstance(c, str) else c.all_text() for c in self.content)

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent


class Dom(HTMLParser):
    """Parses the report the way a browser tokenizes it, keeping every tag and text."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.current = self.root
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(source)
        self.close()

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.tags.append((tag, node.attrs))
        self.current.content.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.tags.append((tag, node.attrs))
        self.current.content.append(node)

    def handle_endtag(self, tag):
        node: Node | None = self.current
        while node is not None and node is not self.root and node.tag != tag:
            node = node.parent
        if node is not None and node is not self.root:  # a stray end tag is ignored
            self.current = node.parent or self.root

    def handle_data(self, data):
        self.current.content.append(data)


# ------------------------------------------------------------------------ tests

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "div", "header", "main", "footer", "nav",
    "section", "article", "h1", "h2", "h3", "h4", "p", "a", "ul", "ol", "li", "dl", "dt", "dd",
    "span", "strong", "code", "time", "blockquote",
    "svg", "desc", "line", "text", "polyline", "circle",
}  # fmt: skip


def test_hostile_text_never_becomes_markup(seeded):
    database, run_id = seeded
    page = render(database, run_id, include_reverted=True)
    dom = Dom(page)
    tags = {tag for tag, _ in dom.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    assert [t for t, _ in dom.tags].count("svg") == 1  # the chart, and no payload's
    assert [t for t, _ in dom.tags].count("style") == 1
    assert [t for t, _ in dom.tags].count("title") == 2 + 6  # page, chart, 6 points
    for tag, attrs in dom.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        assert "srcdoc" not in attrs
        assert "src" not in attrs
        if "href" in attrs:
            assert attrs["href"].startswith("#"), attrs
    for hostile in PAYLOADS:
        assert hostile not in page
        assert str(escape(hostile)) in page  # shown to the reader, as text
    visible = dom.root.all_text()
    for hostile in PAYLOADS:
        assert hostile in visible
    assert "\x1b" not in page
    assert "\x07" not in page
    assert "red" in visible
    assert "and a bell stay out" in visible


def test_the_page_is_self_contained_with_a_strict_policy(seeded):
    database, run_id = seeded
    page = render(database, run_id)
    dom = Dom(page)
    (policy,) = [a for t, a in dom.tags if t == "meta" and "http-equiv" in a]
    assert policy["http-equiv"] == "Content-Security-Policy"
    assert policy["content"].startswith(
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    )
    # The policy comes before anything it governs.
    assert page.index("Content-Security-Policy") < page.index("<style>")
    assert any(a.get("name") == "viewport" for t, a in dom.tags if t == "meta")
    urls = re.findall(r"(?:https?:)?//[\w.-]+", page)
    assert set(urls) == {"http://www.w3.org"}, urls  # only the SVG namespace name
    assert not {"script", "link", "img", "iframe", "object", "embed"} & {t for t, _ in dom.tags}
    css = dom.root.find("style")[0].all_text()
    assert "overflow-wrap: anywhere" in css
    assert "@media print" in css
    assert "break-inside: avoid" in css
    assert "url(" not in css
    assert "@import" not in css


def test_header_shows_the_run_and_its_verified_chain(seeded):
    database, run_id = seeded
    page = render(database, run_id)
    dom = Dom(page)
    with database.read() as session:
        result = Store(session).verify_chain(run_id)
    chain = dom.root.by_id("chain")
    assert "chain-ok" in chain.classes
    words = " ".join(chain.all_text().split())
    assert f"Hash chain verified: {result.checked} entries, head {result.head[:16]}" in words
    header = " ".join(dom.root.find("header")[0].all_text().split())
    assert run_id in header
    assert "awaiting_checkin" in header
    assert "scripted:test" in header
    assert "Hostile " + payload(6) in header
    assert "Dr. " + payload(0) in header
    assert payload(2) in dom.root.by_id("charter").all_text()


def test_a_broken_chain_is_named_in_the_header(seeded):
    database, run_id = seeded
    with database.write() as session:
        session.execute(text("UPDATE entries SET body = 'edited' WHERE seq = 7"))
    dom = Dom(render(database, run_id))
    chain = dom.root.by_id("chain")
    words = " ".join(chain.all_text().split())
    assert "chain-broken" in chain.classes
    assert "Hash chain broken at day 2, seq 7" in words
    assert "edited after commit" in words
    assert "The 6 entries before it verify" in words


def test_every_day_has_a_section_and_a_timeline_row(seeded):
    database, run_id = seeded
    dom = Dom(render(database, run_id))
    sections = [n.attrs["id"] for n in dom.root.find("section") if "day" in n.classes]
    assert sections == [f"day-{i}" for i in range(1, DAYS + 1)]
    rows = dom.root.by_id("timeline").find("li")
    assert len(rows) == DAYS
    for index, row in enumerate(rows, start=1):
        assert row.find("a")[0].attrs["href"] == f"#day-{index}"
        date = (START + dt.timedelta(days=index - 1)).isoformat()
        assert date in row.all_text()
    failed = " ".join(rows[FAILED_DAY - 1].all_text().split())
    assert "failed" in failed
    assert "reply failed validation: " + payload(FAILED_DAY) in failed
    section = dom.root.by_id(f"day-{FAILED_DAY}")
    assert LONG_WORD in section.all_text()  # the whole error, beyond the timeline's preview


def test_a_failed_try_and_the_day_that_took_its_index_have_their_own_anchors(database, spec):
    """A failed try shares its index with the day that later took it; the page must still
    have one element per id, and ``#day-N`` must lead to the day, not the failed try."""
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        tried = add_day(store, run_id, 1, status=DayStatus.FAILED, error="model down")
        add_day(store, run_id, 1, [EntryInput("note", "Held", "The day that took index 1.")])
        tried_id = tried.id
    dom = Dom(render(database, run_id))
    sections = [n.attrs["id"] for n in dom.root.find("section") if "day" in n.classes]
    assert sections == [f"day-1-try-{tried_id}", "day-1"]
    assert "The day that took index 1." in dom.root.by_id("day-1").all_text()
    assert "model down" in dom.root.by_id(f"day-1-try-{tried_id}").all_text()
    (summary,) = [p for p in dom.root.find("p") if "summary" in p.classes]
    assert "1 day: 1 committed, 0 reverted; 1 failed try" in " ".join(summary.all_text().split())


def test_reverted_days_are_struck_through_and_say_so(seeded):
    database, run_id = seeded
    for include in (False, True):
        dom = Dom(render(database, run_id, include_reverted=include))
        rows = dom.root.by_id("timeline").find("li")
        for index in range(1, DAYS + 1):
            section = dom.root.by_id(f"day-{index}")
            struck = index in REVERTED
            assert ("struck" in section.classes) is struck, index
            assert ("struck" in rows[index - 1].classes) is struck, index
            heading = section.find("h3")[0].all_text()
            assert ("reverted" in heading) is struck
            titles = section.find(tag="span", **{"class": "title"})
            if struck and not include:
                assert not titles
                assert "left out" in section.all_text()
            elif index != FAILED_DAY:
                assert f"Question {index}" in [t.all_text() for t in titles]
    css = dom.root.find("style")[0].all_text()
    assert ".struck .day-title { text-decoration: line-through" in css


def test_entries_group_by_kind_and_replies_nest_under_their_parent(seeded):
    database, run_id = seeded
    dom = Dom(render(database, run_id))
    day = dom.root.by_id("day-2")
    assert [h.all_text() for h in day.find("h4")] == ["note (1)", "question (1)", "idea (1)"]
    by_title = {
        n.find(tag="span", **{"class": "title"})[0].all_text(): n
        for n in day.find("article")
        if "entry" in n.classes
    }
    answer, sub = by_title["Answer 2.1.1"], by_title["Sub-question 2.1"]
    question = by_title["Question 2"]
    answer_items = [a for a in answer.ancestors() if a.tag == "li"]
    # answer's <li> sits in sub-question's <li>, which sits in the question's <li>
    assert answer_items[1] is sub.parent
    assert answer_items[2] is question.parent
    assert "kind-subquestion" in sub.classes
    assert "kind-answer" in answer.classes


def test_deep_reply_chains_are_drawn_at_a_bounded_depth(database):
    with database.write() as session:
        store = Store(session)
        run_id = store.create_run(parse_spec(spec_data()), name="deep", model="m").id
        day = add_day(store, run_id, 1, [EntryInput("question", "Root", "root")])
        parent = store.list_entries(run_id)[0][0].id
        for level in range(1, 13):
            (entry,) = store.append_entries(
                run_id,
                [EntryInput("subquestion", f"Level {level}", "deeper", parent_id=parent)],
                day=day,
                external_date=START,
            )
            parent = entry.id
    dom = Dom(render(database, run_id))
    entries = [n for n in dom.root.by_id("day-1").find("article")]
    assert len(entries) == 13
    depth = max(sum(1 for a in n.ancestors() if a.tag == "ul") for n in entries)
    assert depth == MAX_DEPTH + 1
    deepest = entries[-1]
    assert "reply to #12" in " ".join(deepest.all_text().split())


def test_checkins_show_decisions_notes_scores_and_blind_pairs(seeded):
    database, run_id = seeded
    page = render(database, run_id)
    dom = Dom(page)
    cards = [n for n in dom.root.by_id("checkins").find("article") if "checkin" in n.classes]
    assert len(cards) == 7
    heads = [" ".join(c.find("h3")[0].all_text().split()) for c in cards]
    decisions = ["approve", "amend", "reject", "approve", "approve", "approve", "pending"]
    assert [h.split()[2] for h in heads] == decisions
    assert all("drift" in h for h in heads[:6])
    assert "drift" not in heads[6]
    assert "days 7–9" in " ".join(cards[2].all_text().split())
    amend = cards[1].all_text()
    assert "Count marked foragers only. " + payload(5) in amend
    assert "Dance length " + payload(1) in amend  # the human's answer
    assert "rating 3/5" in " ".join(amend.split())
    # Each scored pair shows its calibrated agreement and the levels it was read with,
    # and the card the check-in's figures, as stored by the decision.
    with database.read() as session:
        store = Store(session)
        second = store.list_checkins(run_id)[1]
        (pair, _probe), *_ = store.pairs(second.id)
    assert pair.agreement is not None
    assert pair.null_level is not None
    shown = " ".join(amend.split())
    assert (
        f"calibrated {pair.agreement:.2f} (chance {pair.null_level:.2f}, "
        f"ceiling {pair.ceiling:.2f})" in shown
    )
    assert f"agreement {second.agreement:.2f} · drift trend {second.trend:.2f}" in shown
    pending = " ".join(cards[6].all_text().split())
    assert "opened by hand" in pending
    assert "not answered yet" in pending
    assert SHOWN in pending  # answered blind, so its prediction may be shown
    assert SECRET not in page  # never before the human's blind answer
    assert HIDDEN in pending


def test_drift_chart_plots_every_score_with_labelled_thresholds(seeded):
    database, run_id = seeded
    dom = Dom(render(database, run_id))
    chart = dom.root.by_id("drift-chart")
    with database.read() as session:
        scores = [c.drift_score for c in Store(session).list_checkins(run_id)]
    assert sum(s is not None for s in scores) == 6
    points = chart.find("circle")
    assert len(points) == 6
    titles = [p.find("title")[0].all_text() for p in points]
    assert [t.split(":")[1].split()[1] for t in titles] == [f"{s:.2f}" for s in scores[:6]]
    lines = {
        n.attrs["data-threshold"]: n for n in chart.find("line") if "data-threshold" in n.attrs
    }
    assert set(lines) == {"warn", "alarm"}
    labels = [t.all_text() for t in chart.find("text")]
    assert f"warn {WARN:.2f}" in labels
    assert f"alarm {ALARM:.2f}" in labels
    assert "drift score" in labels
    assert "last day covered by the check-in" in labels
    # The y axis runs 0 (bottom) to 1 (top): alarm above warn, each where it belongs.
    y = {name: float(line.attrs["y1"]) for name, line in lines.items()}
    ys = [float(g.attrs["y1"]) for g in chart.find("line") if "grid" in g.classes]
    zero, one = ys[0], ys[-1]
    assert y["alarm"] < y["warn"]
    assert y["warn"] == pytest.approx(zero + (one - zero) * WARN, abs=0.1)
    assert y["alarm"] == pytest.approx(zero + (one - zero) * ALARM, abs=0.1)
    alarming = [p for p in points if "level-alarm" in p.classes]
    assert alarming  # the check-in rated 1 with unlike answers is above the alarm line
    assert all(float(p.attrs["cy"]) < y["alarm"] for p in alarming)


def test_no_scores_gives_an_empty_state_not_a_chart(database):
    with database.write() as session:
        store = Store(session)
        run_id = store.create_run(parse_spec(spec_data()), name="quiet", model="m").id
        add_day(store, run_id, 1, [EntryInput("note", "n", "b")])
        store.append_entries(
            run_id,
            [EntryInput("correction", "By hand", payload(0), author=Author.HUMAN)],
            day=None,
            external_date=START,
        )
    dom = Dom(render(database, run_id))
    assert not dom.root.find("svg")
    empty = dom.root.by_id("drift-chart-empty")
    assert "No drift scores yet" in empty.all_text()
    assert "warn 0.30, alarm 0.60" in empty.all_text()
    assert "No check-ins yet" in dom.root.by_id("checkins").all_text()
    assert payload(0) in dom.root.by_id("outside").all_text()


def test_cli_writes_the_report_atomically_and_to_stdout(seeded, cli_factory, sqlite_url, tmp_path):
    database, run_id = seeded
    cli = cli_factory(sqlite_url)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "report.html"
    written = cli("export", run_id, "--format", "html", "-o", str(target))
    assert written.exit_code == 0, written.output
    assert [p.name for p in out.iterdir()] == ["report.html"]  # no temporary file left
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")
    printed = cli("export", run_id, "--format", "html", "-o", "-")
    assert printed.exit_code == 0
    assert printed.stdout == page == render(database, run_id)
    assert cli("export", run_id, "-f", "html").stdout == page
    both = cli("export", run_id, "-f", "html", "--include-reverted")
    assert "Question 8" in both.stdout
    assert "Question 8" not in page
    missing = cli("export", run_id, "-f", "html", "-o", str(tmp_path / "nope" / "r.html"))
    assert missing.exit_code == 2
    assert "does not exist" in missing.output


def test_report_of_the_seeded_run_stays_small(seeded):
    database, run_id = seeded
    page = render(database, run_id, include_reverted=True)
    assert len(page.encode()) < 400_000, len(page.encode())


def test_an_amplified_day_draws_its_trees_scores_flags_and_digests(database):
    spec = json.loads(json.dumps(SPEC))
    spec.update(
        subquestions={"depth": 2, "breadth": 2, "token_budget": 100_000},
        babble={"ideas": 3, "flag_top": 1, "min_score": 0},
        digests={"every_days": 2},
    )
    run_id = make_run(database, parse_spec(spec))
    factory, _ = scripted_factory([amplified_reply])
    Loop(database, Settings(), factory).run_days(run_id, 3)
    dom = Dom(render(database, run_id))
    with database.read() as session:
        rows = {e.seq: e for e, _, _ in Store(session).list_entries(run_id)}
    by_id = {e.id: e for e in rows.values()}
    articles = {int(a.attrs["id"].removeprefix("entry-")): a for a in dom.root.find("article")}
    assert set(articles) == set(rows)
    nested = 0
    for seq, entry in rows.items():
        if entry.parent_id is None:
            continue
        # Drawn inside its parent's <li>, one list below the parent's article.
        parent_item = articles[by_id[entry.parent_id].seq].parent
        assert articles[seq].parent.parent.parent is parent_item, (entry.kind, seq)
        nested += 1
    kinds = {e.kind for e in rows.values() if e.parent_id is not None}
    assert nested >= 10
    assert {"subquestion", "answer", "critique"} <= kinds
    flagged = {s for s, a in articles.items() if "flagged" in a.classes}
    assert flagged == {s for s, e in rows.items() if e.flagged}
    assert len(flagged) == 3
    assert all("flagged" in articles[s].all_text() for s in flagged)
    critique = next(s for s, e in rows.items() if e.kind == "critique")
    assert f"score {rows[critique].score}/10" in articles[critique].all_text()
    digest = next(s for s, e in rows.items() if e.kind == "digest")
    assert "level 1 · days 1–2" in " ".join(articles[digest].all_text().split())


def test_a_checkin_decided_without_answers_says_so(database):
    # `checkin decide --approve --skip-probes`: the Markdown and JSONL exports said
    # "approve without answers"; the HTML report showed a plain "approve" badge over
    # probes "not answered yet", as if the human could still answer them.
    run_id = seed_run(database)
    with database.write() as session:
        skipped = _open(session, run_id, 21, 22, ["Guess one.", "Guess two."])
    decide(database, skipped, Decision.APPROVE, require_answers=False)
    dom = Dom(render(database, run_id))
    cards = [n for n in dom.root.by_id("checkins").find("article") if "checkin" in n.classes]
    card = next(c for c in cards if c.attrs.get("id") == f"checkin-{skipped}")
    head = " ".join(card.find("h3")[0].all_text().split())
    assert head == f"Check-in {skipped} approve without answers"
    shown = " ".join(card.all_text().split())
    assert "not answered yet" not in shown
    assert shown.count("not answered") == 2
    answered = next(c for c in cards if c.attrs.get("id") != f"checkin-{skipped}")
    assert "without answers" not in answered.all_text()
