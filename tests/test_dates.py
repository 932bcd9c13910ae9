"""Future-leak dates: dates and cued years count, counts and sizes do not."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest

from loopsim.checkin import dates
from loopsim.checkin.dates import dates_in, later_date

RUN = dt.date(2025, 6, 15)


@pytest.mark.parametrize(
    "text",
    [
        "We trained an SAE with 2048 latents on layer 6.",
        "Probing a 2304-dim residual stream for the feature.",
        "Loss flattens after 2500 steps.",
        "The dictionary has 4096 features and 2048 dead ones.",
        "Each run used 2048 tokens of context.",
        "We ran in 2048 dimensions and then in 4096.",
        "Train until 2050 steps, then stop.",
        "Widths from 2048 to 4096 latents were swept.",
        "Widths between 2048 and 4096 were swept.",
        "We increase the width by 2048 each round.",
        "The matrix is 512 by 2048.",
        "A 2048 x 4096 projection.",
        "Roughly 1 in 2031 cells carried the marker.",
        "About 2100 households were surveyed in Kenya.",
        "Since 2030 households joined, the panel grew.",
        "Colonies of around 2040 bees foraged.",
        "The batch size was 2048.",
        "Llama-2 7B and a 2048-token window.",
        "pip install certifi==2031.6.15",
        "Version v2031.1 of the toolkit.",
        "See arXiv:2506.01234 for details.",
        "A p-value of 0.2031 and 2,031 samples.",
        "The 2048-d latent space.",
        "Layer 20, head 31, position 2031.",
        "Costs were $2030 per hectare.",
        "Memory: 2048MB per worker.",
        "An accuracy of 2031/4096 correct.",
    ],
)
def test_numbers_are_not_dates(text: str) -> None:
    assert later_date(text, RUN) is None


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("Results came in June 2031 from the second lab.", "June 2031"),
        ("in June 2031", "June 2031"),
        ("It was released on 15 June 2031.", "15 June 2031"),
        ("It was released on the 15th of June, 2031.", "15th of June, 2031"),
        ("It was released on June 15, 2031.", "June 15, 2031"),
        ("It was released on June 15th 2031.", "June 15th 2031"),
        ("The workshop ran June 3-5, 2031.", "June 3-5, 2031"),
        ("Data from Jun. 2031 onwards.", "Jun. 2031"),
        ("Sampling resumed in Sept 2025.", "Sept 2025"),
        ("By June of 2031 the bloom had ended.", "June of 2031"),
        ("Checked on 2031-06-15 and again later.", "2031-06-15"),
        ("Checked on 2031/06/15.", "2031/06/15"),
        ("Checked on 06/15/2031.", "06/15/2031"),
        ("Checked on 15/06/2031.", "15/06/2031"),
        ("Checked on 15-06-2031.", "15-06-2031"),
        ("Checked on 15.06.2031.", "15.06.2031"),
        ("In 2031, labs moved to larger dictionaries.", "2031"),
        ("By 2030 most villages had mobile money.", "2030"),
        ("This held until 2027.", "2027"),
        ("Nothing changed since 2026.", "2026"),
        ("As of 2027 the rule stands.", "2027"),
        ("In the year 2031 it changed.", "2031"),
        ("Harvests circa 2031 were poor.", "2031"),
        ("Smith et al. (2031) showed it.", "Smith et al. (2031)"),
        ("Smith (2031a) showed it.", "Smith (2031a)"),
        ("As shown before (Smith, 2031).", "Smith, 2031"),
        ("As shown before (Lee and Park 2031; Ko 2020).", "Lee and Park 2031"),
        ("2031's harvest was poor.", "2031"),
        ("Revenue fell in Q3 2031.", "Q3 2031"),
        ("Revenue fell in 2031 Q3.", "2031 Q3"),
        ("Revenue fell in H2 2031.", "H2 2031"),
        ("The FY2028 budget.", "FY2028"),
        ("The FY28 budget.", "FY28"),
        ("Expect a release in early 2031.", "early 2031"),
        ("Expect a release by mid-2031.", "mid-2031"),
        ("Expect it by year-end 2031.", "year-end 2031"),
        ("Expect it by the end of 2031.", "end of 2031"),
        ("Post-2030 cohorts differ.", "Post-2030"),
        ("Foraging in summer 2031 was unusual.", "summer 2031"),
        ("By the 2030s the method was standard.", "2030s"),
        ("Presented at NeurIPS 2031.", "NeurIPS 2031"),
        ("The 2031 census counted more farms.", "2031 census"),
        ("Grants for 2024-2026 were cut.", "2024-2026"),
        ("The 2025-26 season was dry.", "2025-26"),
        ("Prices rose from 2024 to 2027.", "2024 to 2027"),
        ("Earlier work (Olah, 2020) and later work in 2029.", "2029"),
    ],
)
def test_dates_after_the_run(text: str, phrase: str) -> None:
    assert later_date(text, RUN) == phrase


@pytest.mark.parametrize(
    "text",
    [
        "June 2025 was the month of the survey.",  # the run's own month
        "15 June 2025, the day itself.",
        "06/15/2025",
        "2025-06-15",
        "Early in 2025 we started.",
        "in 2025",
        "late 2025",  # vague: compared by year
        "Q2 2025",
        "FY2026",  # a fiscal year 2026 may start in January 2025
        "the 2020s",
        "Olah et al. (2020) and Elhage et al. (2022) introduced it.",
        "The 2019-20 season.",
        "Grants for 2023-2025.",
        "In 2024 and 2025 the rains failed.",
        "June-July 2025 fieldwork",  # a span compares from its first month
        "Spring 2025 counts.",
        "NeurIPS 2024.",
        "March 2020 lockdowns.",
        "",
    ],
)
def test_dates_not_after_the_run(text: str) -> None:
    assert later_date(text, RUN) is None


def test_month_granularity() -> None:
    assert later_date("June 2025", RUN) is None
    assert later_date("July 2025", RUN) == "July 2025"
    assert later_date("16 June 2025", RUN) == "16 June 2025"
    assert later_date("June 16, 2025", RUN) == "June 16, 2025"


def test_year_granularity() -> None:
    assert later_date("in 2025", dt.date(2025, 1, 1)) is None
    assert later_date("in 2026", dt.date(2025, 12, 31)) == "2026"
    assert later_date("in 2026", dt.date(2026, 1, 1)) is None


def test_quarters_compare_from_their_first_day() -> None:
    assert later_date("Q2 2025", RUN) is None
    assert later_date("Q3 2025", RUN) == "Q3 2025"
    assert later_date("Q3 2025", dt.date(2025, 7, 1)) is None


def test_ambiguous_numeric_dates_take_the_earlier_reading() -> None:
    # 03/04/2026: 4 March (month first) or 3 April (day first); compared as 4 March.
    assert later_date("03/04/2026", dt.date(2026, 3, 10)) is None
    assert later_date("03/04/2026", dt.date(2026, 3, 1)) == "03/04/2026"
    # 04/03/2026: 3 April or 4 March; compared as 4 March either way.
    assert later_date("04/03/2026", dt.date(2026, 3, 10)) is None
    # 15/06/2025 has one reading, day first.
    assert later_date("15/06/2025", dt.date(2025, 6, 14)) == "15/06/2025"
    # Dotted dates are read day first only.
    assert later_date("03.04.2026", dt.date(2026, 3, 10)) == "03.04.2026"


def test_invalid_dates_are_skipped() -> None:
    assert later_date("13/13/2031", RUN) is None
    assert later_date("2031-02-30", RUN) is None
    # An impossible day keeps the month.
    assert later_date("June 31, 2031", RUN) == "June 31, 2031"


def test_ranges_name_their_end() -> None:
    assert later_date("the 2024-2026 grant", RUN) == "2024-2026"
    assert later_date("the 2024–25 season", RUN) is None
    assert later_date("the 2025–26 season", RUN) == "2025-26".replace("-", "–")
    assert later_date("from 2020 to 2090", RUN) is None  # too long a span for a range


def test_the_first_later_date_is_returned() -> None:
    text = "Unlike 2019 work, by 2030 and in June 2031 things change."
    assert later_date(text, RUN) == "2030"
    found = [f.phrase for f in dates_in(text)]
    assert found == ["2030", "June 2031"]


def test_month_names_need_a_capital() -> None:
    assert later_date("the values may 2031 differ", RUN) is None
    assert later_date("they march 2031 miles", RUN) is None


def test_phrase_positions_match_the_text() -> None:
    text = "Smith et al. (2031) and (Lee, 2030b); Q4 2030; 15 June 2031."
    for found in dates_in(text):
        assert text[found.start : found.end] == found.phrase


STDLIB = {"__future__", "datetime", "re", "collections", "dataclasses"}


def test_only_standard_library_imports() -> None:
    tree = ast.parse(Path(dates.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in {
                "__future__",
                "datetime",
                "re",
                "collections",
                "dataclasses",
            }
