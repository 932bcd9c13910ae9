"""Check-in detection delay and false-alarm rate, with a scripted researcher and human.

Each trial is a run on a real SQLite file. The scripted researcher answers probes as
persona A until day k, then as persona B; the scripted human always answers as A and
rates 5 when the prediction agrees, 1 when not, then approves. A stable trial never
switches. Detection delay is the number of days from the switch to the end of the span
of the first check-in whose drift level is "alarm". Run:

    python benchmarks/drift_bench.py [--trials 40] [--days 30]
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage

from loopsim.checkin.decision import decide
from loopsim.config import Settings
from loopsim.loop import Loop
from loopsim.record import db as dbmod
from loopsim.record.store import Store
from loopsim.schemas import Decision, RunStatus, parse_spec
from loopsim.testing import default_reply, scripted_factory

A = "Colonies follow the longest dances, so distance and nectar quality trade off there."
B = "Rocket engines and orbital mechanics are what matter most; bees are irrelevant."
_DAY = re.compile(r"day (\d+),")


def researcher(switch_day: int | None):
    def reply(messages: list[BaseMessage]) -> str:
        text = messages[-1].text
        if "Question:" not in text:
            return default_reply(messages)
        days = [int(d) for d in _DAY.findall(text)]
        today = (max(days) if days else 0) + 1
        return B if switch_day is not None and today > switch_day else A

    return reply


def spec(every: int, p: float) -> Any:
    return parse_spec(
        {
            "persona": {"name": "Bench", "background": "Studies bees."},
            "charter": {"agenda": "How do colonies choose where to forage?"},
            "time": {"policy": "fixed", "anchor": "2025-06-02"},
            "budget": {"days": 1000},
            "checkins": {"every_days": every, "spot_check_probability": p, "probes_per_checkin": 2},
            "probes": ["What decides where a colony forages?", "What would you measure first?"],
        }
    )


def trial(seed: int, switch_day: int | None, days: int, every: int, p: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "t.db")
        dbmod.upgrade(path)
        database = dbmod.Database.open(path)
        with database.write() as session:
            run = Store(session).create_run(spec(every, p), name=f"t{seed}", model="scripted:x")
            run.secret_seed = f"bench-{seed}"
            run_id = run.id
        factory, _ = scripted_factory([researcher(switch_day)])
        loop = Loop(database, Settings(), factory)
        checkins, alarms, first_alarm_day = 0, 0, None
        while True:
            with database.read() as session:
                done = Store(session).count_days(run_id)
            if done >= days:
                break
            loop.run_days(run_id, days - done)
            if loop.opened_checkin is None:
                break
            with database.read() as session:
                pairs = Store(session).pairs(loop.opened_checkin)
                last_day = Store(session).get_checkin(loop.opened_checkin).last_day_index
            answers = {
                probe.id: {"answer": A, "rating": 5 if pair.prediction == A else 1}
                for pair, probe in pairs
            }
            outcome = decide(database, loop.opened_checkin, Decision.APPROVE, answers=answers)
            checkins += 1
            if outcome.drift.level == "alarm":
                alarms += 1
                if first_alarm_day is None:
                    first_alarm_day = last_day
        with database.read() as session:
            assert Store(session).get_run(run_id).status == RunStatus.RUNNING
        database.dispose()
    return {"checkins": checkins, "alarms": alarms, "first_alarm_day": first_alarm_day}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    rng = random.Random(7)
    print(
        "| every N days | spot p | trials | detected | delay mean | delay median | delay max "
        "| false alarms / check-ins (stable runs) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for every, p in ((5, 0.0), (5, 0.15), (10, 0.0), (10, 0.15)):
        delays, missed = [], 0
        for seed in range(args.trials):
            switch = rng.randint(4, 12)
            result = trial(seed, switch, args.days, every, p)
            if result["first_alarm_day"] is None:
                missed += 1
            else:
                delays.append(result["first_alarm_day"] - switch)
        false, total = 0, 0
        for seed in range(args.trials):
            result = trial(1000 + seed, None, args.days, every, p)
            false += result["alarms"]
            total += result["checkins"]
        detected = len(delays)
        print(
            f"| {every} | {p} | {args.trials} | {detected} | "
            f"{statistics.mean(delays):.1f} | {statistics.median(delays):.1f} | "
            f"{max(delays)} | {false} / {total} |"
        )


if __name__ == "__main__":
    main()
