"""Persona-switch detection on realistic text, against an OpenAI-compatible endpoint.

Each trial is a run on a real SQLite file whose researcher is served over HTTP by the
OpenAI-compatible stub on 127.0.0.1 (loopsim talks to it through langchain-openai, as to
any server). The researcher holds persona A's view of one research domain from the
labelled set (benchmarks/data/drift_labelled.jsonl) and never copies: every day and every
probe prediction draws one of four different wordings of A's answer. From day k on
(switch trials) it answers as persona B instead, again in varying words; its day entries
switch with it. The scripted human answers every probe as A, in their own words (another
of A's wordings, never the one the researcher used), and approves. With ``--ratings`` the
human also rates each prediction honestly: 4 or 5 for A's view, 1 or 2 for B's.

Detection: an alarm on a check-in whose span includes a day after the switch, at or
before the first scheduled check-in after it. False alarms: alarms per check-in on runs
that never switch, and check-ins each alarm kind (future leak, charter drift) opened.

    python benchmarks/drift_bench.py [--seeds 40] [--days 30] [--similarity minilm|lexical]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopsim.chat.handle import build_chat
from loopsim.checkin import drift
from loopsim.checkin.decision import decide
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import Decision, parse_spec
from loopsim.testing import report_json
from loopsim.testing.stubserver import StubOpenAI

DATA = Path(__file__).parent / "data"
_DAY = re.compile(r"day (\d+),")
_QUESTION = re.compile(r"Question: (.+)\Z", re.DOTALL)


def load(name: str) -> dict[str, list[dict[str, Any]]]:
    by_domain: dict[str, list[dict[str, Any]]] = {}
    for line in (DATA / f"drift_{name}.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_domain.setdefault(row["domain"], []).append(row)
    return by_domain


def a_wordings(row: dict[str, Any]) -> list[str]:
    return [row["answer"], row["paraphrase"], *row["more_paraphrases"]]


def b_wordings(row: dict[str, Any]) -> list[str]:
    return [row["off_persona"], *row["more_off_persona"]]


@dataclass
class Trial:
    """What the stub's researcher needs to know about the trial under way."""

    seed: int
    rows: list[dict[str, Any]]
    switch: int | None
    said: dict[tuple[int, str], str] = field(default_factory=dict)

    def switched(self, day: int) -> bool:
        return self.switch is not None and day >= self.switch

    def row_for(self, question: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["question"] == question)


class Researcher:
    """The stub's reply function: persona A, or B from the switch day, never verbatim."""

    def __init__(self) -> None:
        self.trial: Trial | None = None

    def __call__(self, body: dict[str, Any]) -> str:
        trial = self.trial
        assert trial is not None
        last = str(body["messages"][-1]["content"])
        days = [int(d) for d in _DAY.findall(last)]
        today = (max(days) if days else 0) + 1
        rng = random.Random(f"{trial.seed}:{today}:{len(last)}")
        switched = trial.switched(today)
        asked = _QUESTION.search(last)
        if asked and "response_format" not in body:
            row = trial.row_for(asked.group(1).strip())
            # A's view in one of the researcher's own wordings (never the answer itself,
            # which is the human's), or B's.
            text = rng.choice(b_wordings(row) if switched else a_wordings(row)[1:])
            trial.said[(today, row["question"])] = text
            return text
        row = rng.choice(trial.rows)
        text = rng.choice(b_wordings(row) if switched else a_wordings(row)[1:])
        return report_json(("note", f"On: {row['question']}"[:120], text))


def spec(rows: list[dict[str, Any]], args: argparse.Namespace) -> Any:
    domain = rows[0]["domain"]
    return parse_spec(
        {
            "persona": {"name": "Bench Researcher", "background": rows[0]["persona"]},
            "charter": {
                "agenda": f"Open questions in {domain}.",
                "open_questions": [r["question"] for r in rows[:3]],
            },
            "time": {"policy": "fixed", "anchor": "2025-06-02"},
            "budget": {"days": args.days + 10},
            "checkins": {
                "every_days": args.every,
                "spot_check_probability": args.spot,
                "probes_per_checkin": 3,
                **({"drift_warn": args.warn} if args.warn is not None else {}),
                **({"drift_alarm": args.alarm} if args.alarm is not None else {}),
            },
            "digests": {"every_days": 0},
            "probes": [r["question"] for r in rows],
        }
    )


def human(
    trial: Trial, pairs: list[Any], rng: random.Random, ratings: bool, last_day: int
) -> dict[int, dict[str, Any]]:
    answers: dict[int, dict[str, Any]] = {}
    for pair, probe in pairs:
        row = trial.row_for(probe.question)
        predicted = pair.prediction or ""
        mine = [w for w in a_wordings(row) if w != predicted]
        given: dict[str, Any] = {"answer": rng.choice(mine)}
        if ratings:
            holds_a = predicted in a_wordings(row)
            given["rating"] = rng.choice([4, 5]) if holds_a else rng.choice([1, 2])
        answers[probe.id] = given
    return answers


def run_trial(
    stub: StubOpenAI,
    researcher: Researcher,
    similarity: drift.Similarity,
    trial: Trial,
    args: argparse.Namespace,
    ratings: bool,
) -> list[dict[str, Any]]:
    researcher.trial = trial
    rng = random.Random(f"human:{trial.seed}")
    settings = Settings(model_base_url=stub.base_url, model_retries=1)
    checkins: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "t.db")
        dbmod.upgrade(path)
        database = dbmod.Database.open(path)
        try:
            with database.write() as session:
                run = Store(session).create_run(
                    spec(trial.rows, args),
                    name=f"t{trial.seed}",
                    model="openai:bench",
                )
                run.secret_seed = f"bench-{trial.seed}"
                run_id = run.id
            loop = Loop(database, settings, build_chat(settings), similarity)
            done = 0
            while done < args.days:
                results = loop.run_days(run_id, args.days - done)
                done += len(results)
                if loop.opened_checkin is None:
                    if not results:
                        break
                    continue
                with database.read() as session:
                    store = Store(session)
                    pairs = list(store.pairs(loop.opened_checkin))
                    opened = store.get_checkin(loop.opened_checkin)
                    reason, last_day = opened.reason, opened.last_day_index
                answers = human(trial, pairs, rng, ratings, last_day)
                outcome = decide(
                    database,
                    loop.opened_checkin,
                    Decision.APPROVE,
                    answers=answers,
                    similarity=similarity,
                    require_answers=True,
                )
                checkins.append(
                    {"reason": reason, "last_day": last_day, "level": outcome.drift.level}
                )
        finally:
            database.dispose()
    return checkins


def detected(checkins: list[dict[str, Any]], switch: int) -> tuple[bool, int | None]:
    """An alarm on a check-in covering the switch, at or before the first scheduled one
    after it; and the delay in days from the switch to that check-in's last day."""
    for c in checkins:
        if c["last_day"] < switch:
            continue
        if c["level"] == "alarm":
            return True, c["last_day"] - switch
        if c["reason"] == "scheduled":
            return False, None
    return False, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--spot", type=float, default=0.1)
    parser.add_argument("--similarity", default="minilm", choices=["minilm", "lexical"])
    parser.add_argument("--data", default="labelled", choices=["labelled", "heldout"])
    parser.add_argument("--warn", type=float, help="drift_warn (default: the spec's)")
    parser.add_argument("--alarm", type=float, help="drift_alarm (default: the spec's)")
    args = parser.parse_args()
    similarity = drift.from_settings("local" if args.similarity == "minilm" else "lexical")
    domains = load(args.data)
    names = sorted(domains)
    researcher = Researcher()
    began = time.perf_counter()
    print(
        f"{args.data} set, similarity {args.similarity}, warn {args.warn or 'default'}, "
        f"alarm {args.alarm or 'default'}; every {args.every} days, spot p {args.spot}, "
        f"{args.days} days, {args.seeds} seeds, switch day k in 6..18\n"
    )
    print(
        "| human rates | switch runs detected | delay median (max) | stable check-ins "
        "| stable alarms | false-alarm rate | stable warns | leak / charter check-ins |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with StubOpenAI(reply=researcher) as stub:
        for ratings in (False, True):
            hits, delays = 0, []
            stable: list[dict[str, Any]] = []
            for seed in range(args.seeds):
                rows = domains[names[seed % len(names)]]
                switch = random.Random(seed).randint(6, 18)
                got = run_trial(
                    stub, researcher, similarity, Trial(seed, rows, switch), args, ratings
                )
                ok, delay = detected(got, switch)
                hits += ok
                if delay is not None:
                    delays.append(delay)
                stable += run_trial(
                    stub, researcher, similarity, Trial(1000 + seed, rows, None), args, ratings
                )
            alarms = sum(c["level"] == "alarm" for c in stable)
            warns = sum(c["level"] == "warn" for c in stable)
            kinds = Counter(c["reason"] for c in stable)
            delay = f"{statistics.median(delays):.0f} ({max(delays)})" if delays else "-"
            print(
                f"| {'yes' if ratings else 'no'} | {hits}/{args.seeds} | {delay} | "
                f"{len(stable)} | {alarms} | {alarms / max(1, len(stable)):.3f} | {warns} | "
                f"{kinds['future_leak']} / {kinds['charter_drift']} |"
            )
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
