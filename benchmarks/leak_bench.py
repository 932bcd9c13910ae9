"""Precision and recall of the future-leak rules on labelled sentences.

Each line of ``benchmarks/data/future_leak.jsonl`` is a sentence of research prose, the
external date it was written on, and whether it names a time after that date. The old
rule (``mentions_later_date``: any four-digit number from 1800 to 2999 is a year) and the
new one (:func:`loopsim.checkin.dates.later_date`: dates, and years only with a cue) are
run on every line. Run:

    python benchmarks/leak_bench.py [--data benchmarks/data/future_leak.jsonl] [--examples]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopsim.checkin.dates import later_date

Rule = Callable[[str, dt.date], "str | None"]
DATA = Path(__file__).parent / "data" / "future_leak.jsonl"


# The rule loopsim used before checkin/dates.py, kept here frozen for the comparison:
# any 4-digit number from 1800 to 2999 read as a year, and ISO-like dates.
_OLD_YEAR = re.compile(r"(?<![\d.,])(1[89]\d\d|2\d\d\d)(?![\d.,]\d)")
_OLD_ISO = re.compile(r"(?<!\d)(\d{4})([-./])(\d{1,2})\2(\d{1,2})(?!\d)")


def old_mentions_later_date(text: str, external: dt.date) -> str | None:
    for match in _OLD_ISO.finditer(text):
        try:
            when = dt.date(int(match[1]), int(match[3]), int(match[4]))
        except ValueError:
            continue
        if when > external:
            return match[0]
    for match in _OLD_YEAR.finditer(text):
        if int(match[1]) > external.year:
            return match[1]
    return None


def old_rule() -> tuple[str, Rule] | None:
    return "old: every 4-digit number a year", old_mentions_later_date


def score(rule: Rule, rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    false_alarms: list[tuple[str, str]] = []
    misses: list[str] = []
    for row in rows:
        found = rule(row["text"], dt.date.fromisoformat(row["external"]))
        if found and row["leak"]:
            counts["tp"] += 1
        elif found:
            counts["fp"] += 1
            false_alarms.append((row["text"], found))
        elif row["leak"]:
            counts["fn"] += 1
            misses.append(row["text"])
        else:
            counts["tn"] += 1
    fired = counts["tp"] + counts["fp"]
    leaks = counts["tp"] + counts["fn"]
    clean = counts["fp"] + counts["tn"]
    return {
        **counts,
        "precision": counts["tp"] / fired if fired else float("nan"),
        "recall": counts["tp"] / leaks if leaks else float("nan"),
        "false_alarm_rate": counts["fp"] / clean if clean else float("nan"),
        "false_alarms": false_alarms,
        "misses": misses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--examples", action="store_true", help="also list the misses")
    args = parser.parse_args()
    lines = args.data.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    leaks = sum(row["leak"] for row in rows)
    rules: list[tuple[str, Rule]] = []
    old = old_rule()
    if old:
        rules.append((f"old: `{old[0]}`", old[1]))
    rules.append(("new: `loopsim.checkin.dates.later_date`", later_date))
    print(f"{len(rows)} sentences, {leaks} leaks, {len(rows) - leaks} clean\n")
    print(
        "| rule | fired on leaks | false alarms | missed | precision | recall | false-alarm rate |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = [(name, score(rule, rows)) for name, rule in rules]
    for name, r in results:
        print(
            f"| {name} | {r['tp']} | {r['fp']} | {r['fn']} | {r['precision']:.2f} "
            f"| {r['recall']:.2f} | {r['false_alarm_rate']:.2f} |"
        )
    for name, r in results:
        print(f"\nFalse alarms, {name}:\n")
        for text, found in r["false_alarms"] or [("(none)", "")]:
            print(f"- {text}" + (f" (read `{found}`)" if found else ""))
        if args.examples:
            print(f"\nMissed leaks, {name}:\n")
            for text in r["misses"] or ["(none)"]:
                print(f"- {text}")


if __name__ == "__main__":
    main()
