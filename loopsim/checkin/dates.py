"""Dates in prose that lie after a run's external date: dates, not numbers.

:func:`later_date` finds the first phrase in a text that names a time after the external
date, for the ``future_leak`` alarm. Research prose is full of four-digit numbers that are
not years ("2048 latents", "a 2304-dim stream", "2500 steps"), so a number counts as a
year only when its form or its context says it is one.

What counts
-----------
- **Full dates.** ISO ``2031-06-15`` and ``2031/06/15``; numeric ``06/15/2031`` and
  ``15-06-2031`` (slash or dash, with a four-digit year last); dotted ``15.06.2031``
  (day first: the European form). Month names, full or short, capitalised: ``15 June
  2031``, ``15th of June, 2031``, ``June 15, 2031``, ``June 3-5, 2031``, ``Jun. 2031``,
  ``June of 2031``, ``June-July 2031``.
- **Periods.** ``Q3 2031``, ``2031 Q3``, ``H2 2031``, ``FY2031`` and ``FY31``, seasons
  (``summer 2031``), decades (``the 2030s``).
- **Bare years with a cue.** A year from 1800 to 2199 directly after ``in``, ``by``,
  ``until``, ``till``, ``since``, ``during``, ``before``, ``after``, ``through``,
  ``throughout``, ``from``, ``between``, ``as of``, ``circa``, ``ca.``, ``c.``,
  ``year``, ``©``; after ``early``, ``mid``, ``late``, ``end of``, ``start of``,
  ``beginning of``, ``year-end``, ``pre-``, ``post-``; a possessive (``2031's``); a
  citation (``Smith (2031)``, ``(Smith et al., 2031a)``, ``[Lee and Park 2031;``); a
  venue (``NeurIPS 2031``); or an event noun after it (``the 2031 census``, ``2031
  report``). A range of years (``2023-2024``, ``2023-24``, ``2023 to 2024``) is a year
  cue by itself when both ends lie in 1800-2199 and the second is later by at most 30.

What does not count
-------------------
- A cued number followed by a unit or a counted noun (``in 2048 dimensions``, ``until
  2500 steps``, ``since 2000 households``), by a hyphenated word (``2304-dim``), by a
  multiplication (``2048 x 4096``), or by a number that is not a year (``from 2048 to
  4096``).
- ``by`` after a number (``512 by 2048``) or within four words after a verb of
  arithmetic (``increase the width by 2048``); ``in`` after a number (``1 in 2000``).
  So "spending will increase by 2030" is read as an amount: a known miss, chosen over
  false alarms.
- ``around``, ``about`` and ``up to`` are not cues: they usually approximate amounts.
- Dotted year-first triples (``2031.06.15``): calendar versions, not dates. Year-month
  forms (``2031-06``, ``06/2031``): too easily a range, an identifier or a fraction.
- Two-digit years except in ``FY31`` and in a range's second end.
- Bare years with no cue at all ("2031 saw a shift"): a known miss.

When a phrase is later
----------------------
Each phrase names a period, and is later than the external date only if the earliest day
it can mean is after it. So a month compares at month granularity ("June 2025" on
2025-06-15 is not later, "July 2025" is), a cued year at year granularity (later only if
year > external.year), and a quarter from its first day. Where a form is ambiguous the
earliest reading wins, to avoid false alarms:

- ``03/04/2026`` reads as 4 March (month first) or 3 April (day first); both are valid, so
  it compares as 4 March 2026. ``15/06/2031`` has one valid reading (day first).
- ``early``, ``mid`` and ``late`` are vague, so ``late 2025`` compares as 2025.
- Fiscal years can start as early as January of the year before (``FY2026`` at some firms
  starts in January 2025), so ``FY2026`` is later only on runs before 2025.
- Winter and (southern) summer can start in December of the year before; spring and
  autumn from March.
- A range names both its ends: ``2024-2026`` is later on a 2025 run because it names 2026.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["dates_in", "later_date"]

_MONTHS = {
    "January": 1,
    "February": 2,
    "March": 3,
    "April": 4,
    "May": 5,
    "June": 6,
    "July": 7,
    "August": 8,
    "September": 9,
    "October": 10,
    "November": 11,
    "December": 12,
    "Jan": 1,
    "Feb": 2,
    "Mar": 3,
    "Apr": 4,
    "Jun": 6,
    "Jul": 7,
    "Aug": 8,
    "Sep": 9,
    "Sept": 9,
    "Oct": 10,
    "Nov": 11,
    "Dec": 12,
}
_MONTH = r"(?:" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\b\.?"
_ORD = r"(?:st|nd|rd|th)?"
# A year of four digits, not the start of a longer number, a decimal or an identifier.
_Y = r"(?P<year>\d{4})(?![\w]|[.,/]\d)"
# The same, not the end of one either.
_LONE = r"(?<![\w.,/$€£#~×=:-])"

FIRST_YEAR, LAST_YEAR = 1800, 2199  # the years a bare number may be
MAX_RANGE = 30  # the longest span of a bare range of years


@dataclass(frozen=True)
class Found:
    """One date phrase: where it is, what it says, and the earliest day it can mean."""

    start: int
    end: int
    phrase: str
    earliest: dt.date


def later_date(text: str, external: dt.date) -> str | None:
    """The phrase of the first date in ``text`` after ``external``, or None."""
    for found in dates_in(text):
        if found.earliest > external:
            return found.phrase
    return None


def dates_in(text: str) -> list[Found]:
    """Every date phrase in ``text``, in order, overlaps resolved to the longest."""
    candidates = sorted(_candidates(text), key=lambda f: (f.start, -(f.end - f.start)))
    chosen: list[Found] = []
    for found in candidates:
        if chosen and found.start < chosen[-1].end:
            continue
        chosen.append(found)
    return chosen


def _day(year: int, month: int, day: int) -> dt.date | None:
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


def _month_start(year: int, month: int) -> dt.date | None:
    return _day(year, month, 1)


def _found(match: re.Match[str], group: int | str, earliest: dt.date | None) -> Found | None:
    if earliest is None:
        return None
    return Found(match.start(group), match.end(group), match[group], earliest)


# -- full and month-name dates ---------------------------------------------------------

_ISO = re.compile(r"(?<![\w./-])(\d{4})([/-])(\d{1,2})\2(\d{1,2})(?![\w]|[./-]\d)")
_NUMERIC = re.compile(r"(?<![\w./-])(\d{1,2})([/.-])(\d{1,2})\2(\d{4})(?![\w]|[./-]\d)")
_DAY_MONTH = re.compile(
    rf"\b(?P<phrase>(?P<day>\d{{1,2}}){_ORD}(?:\s*[-–]\s*\d{{1,2}}{_ORD})?(?:\s+of)?"
    rf"\s+(?P<month>{_MONTH}),?\s+{_Y})"
)
_MONTH_DAY = re.compile(
    rf"\b(?P<phrase>(?P<month>{_MONTH})\s+(?P<day>\d{{1,2}}){_ORD}"
    rf"(?:\s*[-–]\s*\d{{1,2}}{_ORD})?,?\s+{_Y})"
)
_MONTH_YEAR = re.compile(
    rf"\b(?P<phrase>(?P<month>{_MONTH})(?:\s*(?:[-–/]|to|and|or)\s*{_MONTH})?,?"
    rf"\s+(?:of\s+)?{_Y})"
)


def _full_dates(text: str) -> Iterator[Found | None]:
    for m in _ISO.finditer(text):
        yield _found(m, 0, _day(int(m[1]), int(m[3]), int(m[4])))
    for m in _NUMERIC.finditer(text):
        first, second, year = int(m[1]), int(m[3]), int(m[4])
        if m[2] == ".":
            readings = [_day(year, second, first)]
        else:
            readings = [_day(year, first, second), _day(year, second, first)]
        valid = [r for r in readings if r is not None]
        yield _found(m, 0, min(valid) if valid else None)
    for pattern in (_DAY_MONTH, _MONTH_DAY, _MONTH_YEAR):
        for m in pattern.finditer(text):
            month = _MONTHS[m["month"].rstrip(".")]
            year = int(m["year"])
            day = int(m["day"]) if m.groupdict().get("day") else 1
            when = _day(year, month, day) or _month_start(year, month)
            yield _found(m, "phrase", when)


# -- periods -------------------------------------------------------------------------

_QUARTER = re.compile(rf"\b(?P<phrase>(?P<part>[QH][1-4])\s*[-/]?\s*{_Y})")
_QUARTER_AFTER = re.compile(
    r"(?<![\w.,])(?P<phrase>(?P<year>\d{4})\s*[-/]?\s*(?P<part>[QH][1-4]))\b"
)
_FISCAL = re.compile(r"\b(?P<phrase>FY\s?'?(?P<year>\d{4}|\d{2}))(?![\w]|[.,/]\d)")
_SEASON = re.compile(
    rf"(?i:\b(?P<phrase>(?P<season>spring|summer|autumn|fall|winter)(?:\s+of)?,?\s+{_Y}))"
)
_DECADE = re.compile(r"(?<![\w.,])(?P<phrase>(?P<year>\d{3}0)'?s)\b")
_SEASON_START = {"spring": 3, "autumn": 3, "fall": 3, "summer": 12, "winter": 12}


def _plausible(year: int) -> bool:
    return FIRST_YEAR <= year <= LAST_YEAR


def _periods(text: str) -> Iterator[Found | None]:
    for pattern in (_QUARTER, _QUARTER_AFTER):
        for m in pattern.finditer(text):
            part, year = m["part"], int(m["year"])
            if part[0] == "H" and part[1] not in "12":
                continue
            month = (int(part[1]) - 1) * (3 if part[0] == "Q" else 6) + 1
            yield _found(m, "phrase", _month_start(year, month))
    for m in _FISCAL.finditer(text):
        year = int(m["year"]) + (2000 if len(m["year"]) == 2 else 0)
        yield _found(m, "phrase", _month_start(year - 1, 1))
    for m in _SEASON.finditer(text):
        year = int(m["year"])
        if not _plausible(year) or _counted_after(text, m.end()):
            continue
        month = _SEASON_START[m["season"].lower()]
        yield _found(m, "phrase", _month_start(year - 1 if month == 12 else year, month))
    for m in _DECADE.finditer(text):
        year = int(m["year"])
        if _plausible(year):
            yield _found(m, "phrase", _month_start(year, 1))


# -- bare years with a cue -----------------------------------------------------------

_CUES = (
    r"in|by|until|till|til|since|during|before|after|through|throughout|from|between|"
    r"as\s+of|circa|ca\.|c\.|year|©"
)
_CUED = re.compile(rf"(?i:(?<![\w.])(?P<cue>{_CUES}))\s+{_LONE}{_Y}")
_QUALIFIED = re.compile(
    r"(?i:\b(?P<phrase>(?:early|mid|late|end\s+of|start\s+of|beginning\s+of|year-end|end|"
    r"pre|post)(?:\s*-\s*|\s+)(?:the\s+year\s+)?(?P<year>\d{4})))(?![\w]|[.,/]\d)"
)
_POSSESSIVE = re.compile(rf"{_LONE}(?P<phrase>(?P<year>\d{{4}}))['’]s\b")
_NAME = r"[A-Z][\w'’-]+"
_AUTHORS = rf"{_NAME}(?:\s+et\s+al\.?|\s+(?:and|&)\s+{_NAME})?"
# Smith (2031), Smith et al. (2031a)
_CITE_OUTSIDE = re.compile(rf"\b(?P<phrase>{_AUTHORS}\s+\((?P<year>\d{{4}})[a-z]?\))")
# (Smith, 2031), [Lee and Park 2031; ...]
_CITE_INSIDE = re.compile(rf"\b(?P<phrase>{_AUTHORS},?\s+(?P<year>\d{{4}})[a-z]?)(?=[)\];])")
_VENUES = (
    "NeurIPS|NIPS|ICML|ICLR|ACL|EMNLP|NAACL|COLING|COLM|CVPR|ICCV|ECCV|AAAI|IJCAI|KDD|"
    "SIGIR|Interspeech|ICASSP|AISTATS|UAI|CoRL|RSS|ISMB|RECOMB|ASSA|AEA|NBER"
)
_VENUE = re.compile(rf"\b(?P<phrase>(?:{_VENUES})\s*'?(?P<year>\d{{4}}))(?![\w]|[.,/]\d)")
_EVENTS = (
    "census|election|elections|report|survey|season|edition|release|harvest|drought|"
    "cohort|paper|review|conference|workshop|meeting|budget|summit|outbreak|pandemic|"
    "flood|floods|monsoon|field\\s+season|olympics|world\\s+cup|recession|crisis|reform|"
    "guidelines|roadmap|deadline|target|agenda|strategy|launch|fiscal\\s+year|"
    "academic\\s+year|school\\s+year|preprint|expedition|bloom|spawning"
)
_EVENT = re.compile(rf"{_LONE}(?P<phrase>(?P<year>\d{{4}})\s+(?i:(?:{_EVENTS}))\b)")
_RANGE = re.compile(
    _LONE + r"(?P<phrase>(?P<year>\d{4})\s*(?:[-–—/]|to|and|until|through)\s*"
    r"(?P<end>\d{4}|\d{2}))(?![\w]|[.,/]\d|-\w)"
)


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# What may follow a number that is a count, not a year.
_COUNTED = _wordset(
    """
    latent feature dim dimension unit neuron head layer parameter param weight token
    step epoch iteration iter update batch sample example image pixel px word sentence
    document doc prompt sequence seq char character byte bit kb mb gb tb flop gpu tpu
    cpu core node worker run seed trial episode rollout game move query pair model
    checkpoint agent item row column col entry record file line user participant
    subject respondent people person household village firm farm student child adult
    patient cell gene read base bp kbp nucleotide protein residue molecule mouse mice
    rat fish bee colony hive flower plant tree leaf species individual site plot transect
    km cm mm nm µm um mi ft kg mg µg ug tonne ton lb ml hz khz mhz ghz ms sec second
    minute min hour hr day week month year yr kwh mw kw ppm ppb dollar usd eur euro
    pound rupee shilling yen percent pct % point pt rep observation obs measurement
    datapoint vote case death birth loan account transaction contract job hectare ha
    acre mile meter metre sq cluster class label category topic region country district
    county city town frame clip video utterance page citation x ×
    """
)
_NEXT_WORD = re.compile(r"\s*(?:-\s*)?([^\W\d_][\w'’]*|[%$×x])", re.UNICODE)
_ARITHMETIC = _wordset(
    """
    increase increased increases increasing decrease decreased decreases decreasing
    grow grows grew grown growing reduce reduced reduces reducing multiply multiplied
    multiplies divide divided divides divisible scale scaled scales scaling pad padded
    offset shift shifted shifts stride strided expand expanded widen widened shrink
    shrank shrunk factor exceed exceeds exceeded outnumber outnumbered
    """
)
_WORD = re.compile(r"[\w'’]+")


def _counted_after(text: str, end: int) -> bool:
    """Whether the text right after a number makes it a count or a size, not a year."""
    rest = text[end:]
    if re.match(r"-[^\W\d_]", rest):  # a compound modifier: 2304-dim, 2048-token
        return True
    if re.match(r"\s*(?:[x×]|by)\s*\d", rest):  # 2048 x 4096, 2048 by 4096
        return True
    m = _NEXT_WORD.match(rest)
    if not m:
        return False
    word = m[1].lower().rstrip("'’")
    return word in _COUNTED or (word.endswith("s") and word[:-1] in _COUNTED)


def _cue_is_arithmetic(text: str, cue_start: int, cue: str) -> bool:
    """Whether ``by`` or ``in`` before a number belongs to a quantity, not a time."""
    before = text[:cue_start]
    cue = cue.lower()
    if cue in ("by", "in") and re.search(r"(?:\d|\bone)\s*$", before):
        return True  # 512 by 2048, 1 in 2000, one in 2000
    if cue == "by":
        words = [w.lower() for w in _WORD.findall(before)[-4:]]
        return any(w in _ARITHMETIC for w in words)
    return False


def _range_end(start: int, end_text: str) -> int | None:
    """The later year of a range, or None when the second number is not a later year."""
    end = int(end_text)
    if len(end_text) == 2:
        end += start - start % 100
    if not (_plausible(start) and _plausible(end)) or not 0 < end - start <= MAX_RANGE:
        return None
    return end


def _bare_years(text: str) -> Iterator[Found | None]:
    for m in _RANGE.finditer(text):
        end = _range_end(int(m["year"]), m["end"])
        if end is not None and not _counted_after(text, m.end()):
            yield _found(m, "phrase", _month_start(end, 1))
    for m in _CUED.finditer(text):
        year = int(m["year"])
        if not _plausible(year) or _cue_is_arithmetic(text, m.start("cue"), m["cue"]):
            continue
        if _counted_after(text, m.end()):
            continue
        follow = re.match(r"\s*(?:[-–—]|to|and|or)\s*(\d+)\b", text[m.end() :])
        if follow and _range_end(year, follow[1]) is None and len(follow[1]) >= 3:
            continue  # from 2048 to 4096: a range of sizes
        yield _found(m, "year", _month_start(year, 1))
    for pattern in (_QUALIFIED, _POSSESSIVE, _CITE_OUTSIDE, _CITE_INSIDE, _VENUE, _EVENT):
        for m in pattern.finditer(text):
            year = int(m["year"])
            if not _plausible(year):
                continue
            if pattern is _QUALIFIED and _counted_after(text, m.end()):
                continue
            yield _found(m, "phrase", _month_start(year, 1))


def _candidates(text: str) -> Iterator[Found]:
    for source in (_full_dates(text), _periods(text), _bare_years(text)):
        for found in source:
            if found is not None:
                yield found
