"""`loopsim record search`: the real CLI on real SQLite (FTS5) and PostgreSQL (tsvector)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pytest

from loopsim.cli.record import snippet
from loopsim.record.db import Database
from loopsim.record.store import EntryInput, Store
from loopsim.schemas import Author, DayStatus
from loopsim.testing import add_day, scripted_factory
from tests.conftest import make_run

JUNE_2, JUNE_3, JUNE_4 = dt.date(2025, 6, 2), dt.date(2025, 6, 3), dt.date(2025, 6, 4)
FIELDS = {"day", "external_date", "kind", "seq", "title", "snippet", "reverted", "day_status"}


@pytest.fixture
def cli(cli_factory, any_url):
    factory, _ = scripted_factory()
    return cli_factory(any_url, factory)


@pytest.fixture
def database(any_url):
    database = Database.open(any_url)
    yield database
    database.dispose()


def seed(database: Database, spec, days) -> str:
    """A run whose days hold the given entries: [(index, date, status, [EntryInput])]."""
    run_id = make_run(database, spec)
    with database.write() as session:
        store = Store(session)
        for index, date, status, items in days:
            add_day(store, run_id, index, items, status=status, date=date)
    return run_id


def search(cli, run_id: str, query: str, *args: str):
    result = cli("record", "search", run_id, query, *args)
    assert "Traceback" not in result.output
    return result


def hits(cli, run_id: str, query: str, *args: str) -> list[dict]:
    result = search(cli, run_id, query, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_hits_are_ranked_and_shown_with_day_date_kind_and_seq(cli, database, spec):
    run_id = seed(
        database,
        spec,
        [
            (
                1,
                JUNE_2,
                DayStatus.COMMITTED,
                [
                    EntryInput(
                        "note",
                        "Morning at the hive",
                        "Watched the entrance for an hour. Traffic was heavy, and one forager "
                        "came back dusted with pollen rather than carrying nectar.",
                    ),
                    EntryInput("plan", "Tomorrow", "Count returning foragers at ten o'clock."),
                ],
            ),
            (
                2,
                JUNE_3,
                DayStatus.COMMITTED,
                [
                    EntryInput(
                        "hypothesis",
                        "Nectar quality drives recruitment",
                        "Nectar concentration, not distance, predicts dance length: richer "
                        "nectar means longer dances, and sweeter nectar recruits more bees.",
                    )
                ],
            ),
        ],
    )
    with database.write() as session:  # a human note lives outside any day
        Store(session).append_entries(
            run_id,
            [EntryInput("correction", "Mind the nectar", "Weigh nectar by sugar.", Author.HUMAN)],
            day=None,
            external_date=JUNE_4,
        )
    result = search(cli, run_id, "nectar")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    heads = [line for line in lines if line.startswith("day ")]
    # The entry about nectar ranks above the one that mentions it in passing; the plan,
    # which never mentions it, is not a hit.
    nectar = "day 2  2025-06-03  hypothesis  #3  **Nectar** quality drives recruitment"
    assert heads.index(nectar) < heads.index("day 1  2025-06-02  note  #1  Morning at the hive")
    assert "day -  2025-06-04  correction  #4  Mind the **nectar**" in heads
    assert len(heads) == 3
    assert not any("Tomorrow" in line for line in lines)
    # Each hit is followed by an indented snippet of its body.
    after = lines[lines.index("day 1  2025-06-02  note  #1  Morning at the hive") + 1]
    assert after.startswith("    ")
    assert "pollen rather than carrying **nectar**." in after


def test_reverted_days_are_searched_and_marked(cli, database, spec):
    body = "Scouts that found the clover field danced for the clover field all morning."
    run_id = seed(
        database,
        spec,
        [
            (1, JUNE_2, DayStatus.COMMITTED, [EntryInput("note", "Clover kept", body)]),
            (2, JUNE_2, DayStatus.REVERTED, [EntryInput("note", "Clover undone", body)]),
        ],
    )
    found = {h["title"]: h for h in hits(cli, run_id, "clover")}
    assert found["Clover undone"]["reverted"] is True
    assert found["Clover undone"]["day_status"] == DayStatus.REVERTED
    assert found["Clover kept"]["reverted"] is False
    assert found["Clover kept"]["day_status"] == DayStatus.COMMITTED
    text = search(cli, run_id, "clover").stdout.splitlines()
    assert "day 2  2025-06-02  note  #2  **Clover** undone  [reverted]" in text
    assert "day 1  2025-06-02  note  #1  **Clover** kept" in text


def test_entries_of_another_run_are_never_returned(cli, database, spec):
    mine = seed(
        database,
        spec,
        [(1, JUNE_2, DayStatus.COMMITTED, [EntryInput("note", "Lavender", "Lavender once.")])],
    )
    other = seed(
        database,
        spec,
        [
            (
                1,
                JUNE_2,
                DayStatus.COMMITTED,
                [
                    EntryInput(
                        "note", f"Lavender {n}", "Lavender lavender lavender, and thyme too."
                    )
                    for n in range(5)
                ]
                + [EntryInput("note", "Thyme", "Only thyme grows on this slope of the hill.")],
            )
        ],
    )
    assert [(h["seq"], h["title"]) for h in hits(cli, mine, "lavender")] == [(1, "Lavender")]
    assert len(hits(cli, other, "lavender")) == 5
    result = search(cli, mine, "thyme")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no matches" in result.stderr
    assert "thyme" in result.stderr
    assert hits(cli, mine, "thyme") == []


def test_runs_written_in_turn_into_one_database_stay_apart(cli, database, spec):
    """Two runs stepped alternately (as a service does) interleave their entry ids; each
    run's search still finds all of its own matches and none of the other's."""
    a, b = make_run(database, spec), make_run(database, spec)
    for index in range(1, 7):
        for run_id, word in ((a, "lavender"), (b, "thyme")):
            with database.write() as session:
                items = [EntryInput("note", f"{word} {index}.{k}", f"{word} again") for k in (1, 2)]
                add_day(Store(session), run_id, index, items, date=JUNE_2)
    assert len(hits(cli, a, "lavender", "--limit", "50")) == 12
    assert len(hits(cli, b, "thyme", "--limit", "50")) == 12
    assert hits(cli, a, "thyme") == []
    assert hits(cli, b, "lavender") == []


def test_json_has_the_documented_fields(cli, database, spec):
    run_id = seed(
        database,
        spec,
        [
            (
                3,
                JUNE_3,
                DayStatus.COMMITTED,
                [EntryInput("question", "Why sunflowers", "Why do sunflowers draw so few?")],
            )
        ],
    )
    (hit,) = hits(cli, run_id, "sunflowers")
    assert set(hit) == FIELDS
    assert hit == {
        "day": 3,
        "external_date": "2025-06-03",
        "kind": "question",
        "seq": 1,
        "title": "Why sunflowers",
        "snippet": "Why do sunflowers draw so few?",
        "reverted": False,
        "day_status": "committed",
    }
    assert len(hits(cli, run_id, "sunflowers", "--limit", "1")) == 1


def test_limit_caps_the_hits(cli, database, spec):
    items = [
        EntryInput("note", f"Wax {n}", f"Beeswax comb number {n} was weighed.") for n in range(8)
    ]
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, items)])
    assert len(hits(cli, run_id, "beeswax")) == 8
    assert len(hits(cli, run_id, "beeswax", "--limit", "3")) == 3
    assert search(cli, run_id, "beeswax", "--limit", "0").exit_code == 2


def test_a_long_query_says_what_it_searched_and_echoes_it_short(cli, database, spec):
    items = [EntryInput("note", "Wax", "Beeswax comb was weighed.")]
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, items)])
    words = [f"word{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(30)]
    result = search(cli, run_id, " ".join([*words, "beeswax"]))
    # Only the first 24 words are searched (beeswax is the 31st): say so, not just "none".
    assert "searching the first 24 of the query's 31 words" in result.stderr
    assert "no matches for" in result.stderr
    assert result.exit_code == 0
    huge = search(cli, run_id, "z" * 100_000)
    (line,) = huge.stderr.strip().splitlines()
    assert line.startswith("no matches for " + "z" * 39 + "…")
    assert len(line) < 300


@pytest.mark.parametrize(
    "query", ["", "   ", "the a of", "that with from", "!!! ?? --", "is it", "THE OF"]
)
def test_a_query_with_no_searchable_words_is_a_usage_error(cli, database, spec, any_url, query):
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, [])])
    before = _digest(any_url)
    result = search(cli, run_id, query)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the query has no words to search for")
    assert result.stdout == ""
    assert _digest(any_url) == before


HOSTILE_TITLE = "Dances\x1b[31m red\x1b[0m \x9b2J"
HOSTILE_BODY = (
    "The waggle dance \x1b[2J\x1b]0;pwned\x07 encodes distance \x1bP+q544e\x1b\\ and "
    "\x9d8;;http://evil.example\x9c direction \x90qq\x9c to the pollen \x07\x08\x7f source."
)


def test_terminal_escapes_in_entries_never_reach_the_output(cli, database, spec):
    run_id = seed(
        database,
        spec,
        [(1, JUNE_2, DayStatus.COMMITTED, [EntryInput("note", HOSTILE_TITLE, HOSTILE_BODY)])],
    )
    text = search(cli, run_id, "pollen")
    as_json = search(cli, run_id, "pollen", "--json")
    for result in (text, as_json):
        assert result.exit_code == 0, result.output
        raw = result.stdout_bytes + result.stderr_bytes
        for bad in ("\x1b", "\x07", "\x08", "\x7f", "\x9b", "\x9c", "\x9d", "\x90"):
            assert bad.encode() not in raw, bad
        assert b"\\u001b" not in raw
        assert b"\\u0007" not in raw
    assert (
        "The waggle dance encodes distance and direction to the **pollen** source." in text.stdout
    )
    assert "evil.example" not in text.stdout
    (hit,) = json.loads(as_json.stdout)
    assert hit["title"] == "Dances red"
    assert "dance encodes distance" in hit["snippet"]
    assert "pwned" not in hit["snippet"]


def test_snippet_centres_on_the_first_match():
    filler = "the colony went about its ordinary business " * 12
    body = f"{filler}until one scout found forage on the ridge; {filler}"
    got = snippet(body, ["foraging"])  # stemmed: 'foraging' matched 'forage'
    assert "found forage on the ridge" in got
    assert got.startswith("…")
    assert got.endswith("…")
    assert len(got) <= 162
    assert snippet("Short\x1b[1m body\n\twith  spaces.", ["body"]) == "Short body with spaces."
    assert snippet(body, ["absent"]).startswith("the colony went about")


def _digest(url: str) -> str | None:
    if "://" in url:
        return None
    path = Path(url)
    parts = [p for p in (path, Path(f"{path}-wal")) if p.exists()]
    return hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()


def test_three_letter_and_capitalised_two_letter_words_are_searched(cli, database, spec):
    items = [
        EntryInput("note", "Probing the MLP", "An SAE trained on the MLP output; the KL term."),
        EntryInput("note", "Unrelated", "Nothing of the sort is written here at all."),
    ]
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, items)])
    for query in ("MLP", "SAE", "sae", "KL"):
        found = hits(cli, run_id, query)
        assert [h["title"] for h in found] == ["Probing the MLP"], query


def test_dropped_words_are_reported_on_stderr(cli, database, spec):
    items = [EntryInput("note", "Probing", "The KL divergence of the MLP.")]
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, items)])
    result = search(cli, run_id, "what is the kl of an MLP")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == (
        "left out of the search, too short or too common: 'what', 'is', 'the', 'kl', 'of', 'an'"
    )
    assert "**MLP**" in result.stdout


def test_matched_words_are_marked_bold_on_a_terminal_and_with_stars_in_a_pipe(
    cli_factory, database, spec, any_url
):
    import io

    from rich.console import Console
    from typer.testing import CliRunner

    from loopsim.cli import AppContext, app
    from loopsim.config import Settings

    body = "A scout foraging far away; the MLP saw forage and nothing else."
    items = [EntryInput("note", "Scouts", body)]
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, items)])
    plain = search(cli_factory(any_url), run_id, "forage MLP").stdout
    assert "A scout **foraging** far away; the **MLP** saw **forage** and nothing else." in plain
    screen = io.StringIO()
    obj = AppContext(
        Settings(database_url=any_url),
        out=Console(file=screen, force_terminal=True, color_system="standard", markup=False),
    )
    result = CliRunner().invoke(app, ["record", "search", run_id, "forage MLP"], obj=obj)
    assert result.exit_code == 0, result.output
    shown = screen.getvalue()
    assert "\x1b[1mforaging\x1b[0m" in shown
    assert "\x1b[1mMLP\x1b[0m" in shown
    assert "**" not in shown


def test_a_match_in_the_title_is_marked_too(cli, database, spec):
    # A hit found only by its title showed an unmarked snippet: nothing on screen said
    # why it matched.
    items = [EntryInput("question", "Why do worker bees dance?", "Nothing else is said.")]
    run_id = seed(database, spec, [(1, JUNE_2, DayStatus.COMMITTED, items)])
    result = search(cli, run_id, "bee")
    assert result.exit_code == 0, result.output
    assert "Why do worker **bees** dance?" in result.stdout
    assert "Nothing else is said." in result.stdout
