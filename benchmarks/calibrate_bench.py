"""Calibrated agreement on labelled text: priors, separation, the judge, quiet check-ins.

Reads the two labelled probe sets in ``benchmarks/data``: ``drift_labelled.jsonl`` (the
main set, 66 probes) and ``drift_heldout.jsonl`` (18 probes in a different style). Each
probe has a human answer, four faithful paraphrases of it, a same-topic contradiction and
three answers from a different persona. For the word-count cosine ("lexical") and the
offline MiniLM embedder ("minilm") it prints:

1. the priors measured on the main set: null, the mean similarity of an answer to the
   answers of the other questions of its domain (chance: right register, wrong question);
   ceiling, the median similarity of an answer to its faithful paraphrases;
2. per set, the mean raw similarity and calibrated agreement of the answer against its
   paraphrases, its contradiction and the off-persona answers, with the separation AUC;
3. simulated check-ins of 3 probes of one held-out domain where every prediction is a
   faithful paraphrase and no rating is given: the drift, and the share that would warn
   or alarm, read against the priors alone and against levels with the run's own null;
4. with ``--judge``, the judge on the embedded Gemma 3 270M model over the held-out set
   (slow: 54 model calls).

AUCs are computed on the raw similarity: calibration is monotone, so it cannot reorder
pairs, only tie them at 0 or 1.

    python benchmarks/calibrate_bench.py [--judge] [--ceiling-quantile 0.5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from loopsim.checkin import calibration, drift

DATA = Path(__file__).parent / "data"
MAIN = "drift_labelled.jsonl"
HELDOUT = "drift_heldout.jsonl"
KINDS = ("lexical", "minilm")
GROUPS = ("paraphrase", "contradiction", "off_persona")
CHECKIN_PROBES = 3
WARN, ALARM = 0.5, 0.7
NULLS = {
    "prior": "priors only",
    "run": "run null (prediction vs other answers)",
    "human": "human null (answer vs other answers)",
}  # the default check-in thresholds (docs/drift.md)

Row = dict[str, Any]
Similarity = Callable[[str, str], float]


def load(name: str) -> list[Row]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def group(row: Row, name: str) -> list[str]:
    """The texts of one group of a probe: all four paraphrases, the contradiction, or all
    three off-persona answers."""
    if name == "paraphrase":
        return [row["paraphrase"], *row["more_paraphrases"]]
    if name == "off_persona":
        return [row["off_persona"], *row["more_off_persona"]]
    return [row[name]]


def similarity(kind: str, rows: Iterable[Row] = ()) -> Similarity:
    """The similarity of ``kind``; for the embedder, every text of ``rows`` embedded in one
    batch first (the cache is widened to hold them all)."""
    if kind == "lexical":
        return drift.lexical_similarity
    sim = drift.from_settings("local")
    assert isinstance(sim, drift.EmbeddingSimilarity)
    texts = [t for r in rows for t in (r["answer"], *(x for g in GROUPS for x in group(r, g)))]
    sim.cache_size = max(sim.cache_size, 2 * len(texts))
    if texts:
        sim.vectors(texts)
    return sim


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Mann-Whitney AUC: the chance a random positive scores above a random negative,
    ties counting half."""
    if not positive or not negative:
        return float("nan")
    wins = 0.0
    for p in positive:
        for n in negative:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(positive) * len(negative))


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (q = 0.5 is the median)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def null_samples(rows: Sequence[Row], sim: Similarity) -> list[float]:
    """Each answer against the answers of the other questions of its domain."""
    return [
        sim(a["answer"], b["answer"])
        for a in rows
        for b in rows
        if a is not b and a["domain"] == b["domain"]
    ]


def ceiling_samples(rows: Sequence[Row], sim: Similarity) -> list[float]:
    """Each answer against each of its faithful paraphrases."""
    return [sim(r["answer"], p) for r in rows for p in group(r, "paraphrase")]


def measure_priors(rows: Sequence[Row], sim: Similarity, q: float) -> calibration.Levels:
    return calibration.Levels(
        null=statistics.fmean(null_samples(rows, sim)),
        ceiling=quantile(ceiling_samples(rows, sim), q),
    )


def raw_scores(rows: Sequence[Row], sim: Similarity) -> dict[str, list[float]]:
    return {g: [sim(r["answer"], t) for r in rows for t in group(r, g)] for g in GROUPS}


def checkin_drifts(
    rows: Sequence[Row],
    sim: Similarity,
    kind: str,
    prior: calibration.Levels,
    *,
    null: str = "prior",
    predicted: str = "paraphrase",
) -> list[float]:
    """Drift of every 3-probe check-in within one domain, over every choice of text of the
    ``predicted`` group as the prediction, with no rating.

    ``null`` says where the chance level comes from: "prior" alone; "run", each
    prediction against the answers of the domain's other probes, as
    ``scoring.score_checkin`` measures it; "human", each of the check-in's answers
    against the domain's other answers (the human's own spread, which no prediction moves).
    """
    by_domain: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_domain[r["domain"]].append(r)
    drifts: list[float] = []
    for domain_rows in by_domain.values():
        for probes in itertools.combinations(domain_rows, CHECKIN_PROBES):
            choices = [group(r, predicted) for r in probes]
            for predictions in itertools.product(*choices):
                levels = prior
                if null != "prior":
                    nulls = [
                        sim(pred if null == "run" else probe["answer"], other["answer"])
                        for pred, probe in zip(predictions, probes, strict=True)
                        for other in domain_rows
                        if other is not probe
                    ]
                    levels = _levels_against(kind, prior, nulls)
                agreements = [
                    levels.calibrate(sim(pred, probe["answer"]))
                    for pred, probe in zip(predictions, probes, strict=True)
                ]
                score = drift.drift_score(agreements)
                assert score is not None
                drifts.append(score)
    return drifts


def _levels_against(
    kind: str, prior: calibration.Levels, nulls: Sequence[float]
) -> calibration.Levels:
    """``calibration.levels`` with ``prior`` standing in for the module's own, so that a
    candidate prior can be measured before it is written into PRIORS."""
    saved = calibration.PRIORS.get(kind)
    calibration.PRIORS[kind] = prior
    try:
        return calibration.levels(kind, nulls, [])
    finally:
        if saved is None:
            del calibration.PRIORS[kind]
        else:
            calibration.PRIORS[kind] = saved


def fmt(value: float) -> str:
    return f"{value:.2f}"


def print_priors(main: Sequence[Row], sims: dict[str, Similarity], q: float) -> None:
    print(f"Priors measured on {MAIN} ({len(main)} probes)\n")
    print(
        "| similarity | null (mean, other questions, same domain) | null sd "
        "| paraphrase p25 | paraphrase median | ceiling used | in PRIORS now |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        nulls = null_samples(main, sims[kind])
        ceil = ceiling_samples(main, sims[kind])
        now = calibration.prior(kind)
        print(
            f"| {kind} | {fmt(statistics.fmean(nulls))} | {fmt(statistics.stdev(nulls))} "
            f"| {fmt(quantile(ceil, 0.25))} | {fmt(statistics.median(ceil))} "
            f"| {fmt(quantile(ceil, q))} | {fmt(now.null)} / {fmt(now.ceiling)} |"
        )
    print()


def print_agreement(
    sets: dict[str, list[Row]], sims: dict[str, Similarity], priors: dict[str, calibration.Levels]
) -> None:
    print("Mean raw similarity and calibrated agreement of the answer against each group\n")
    print(
        "| set | similarity | paraphrase raw / cal | contradiction raw / cal "
        "| off-persona raw / cal | AUC para > off | AUC para > contra |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for set_name, rows in sets.items():
        for kind in KINDS:
            scores = raw_scores(rows, sims[kind])
            cells = []
            for g in GROUPS:
                raw = statistics.fmean(scores[g])
                cal = statistics.fmean(priors[kind].calibrate(s) for s in scores[g])
                cells.append(f"{fmt(raw)} / {fmt(cal)}")
            para = scores["paraphrase"]
            print(
                f"| {set_name} | {kind} | {' | '.join(cells)} "
                f"| {fmt(auc(para, scores['off_persona']))} "
                f"| {fmt(auc(para, scores['contradiction']))} |"
            )
    print()


def print_checkins(
    rows: Sequence[Row], sims: dict[str, Similarity], priors: dict[str, calibration.Levels]
) -> None:
    print(
        f"Check-ins with no rating ({HELDOUT}: every {CHECKIN_PROBES} probes of one domain, "
        "every choice of predicted text)\n"
    )
    print(
        "| predictions | similarity | levels | check-ins | drift mean | drift min / max "
        "| warn (>= 0.5) | alarm (>= 0.7) |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for predicted in GROUPS:
        for kind in KINDS:
            for null, label in NULLS.items():
                d = checkin_drifts(
                    rows, sims[kind], kind, priors[kind], null=null, predicted=predicted
                )
                warn = sum(x >= WARN for x in d) / len(d)
                alarm = sum(x >= ALARM for x in d) / len(d)
                print(
                    f"| {predicted} | {kind} | {label} | {len(d)} | {fmt(statistics.fmean(d))} "
                    f"| {fmt(min(d))} / {fmt(max(d))} | {warn:.0%} | {alarm:.0%} |"
                )
    print()


def print_judge(rows: Sequence[Row], model: str, temperature: float) -> None:
    from loopsim.chat.handle import build_chat
    from loopsim.checkin.judge import JUDGE_MAX_TOKENS, judge
    from loopsim.config import Settings
    from loopsim.schemas import ModelSpec

    chat = build_chat(Settings())(model, ModelSpec(temperature=temperature), JUDGE_MAX_TOKENS)
    # Load the weights outside the timed calls.
    judge(chat, "Warm-up?", "Yes.", "Yes.")
    ratings: dict[str, list[int]] = {g: [] for g in GROUPS}
    failed = calls = 0
    seconds: list[float] = []
    for row in rows:
        for g in GROUPS:
            began = time.perf_counter()
            verdict = judge(chat, row["question"], row["answer"], row[g])
            seconds.append(time.perf_counter() - began)
            calls += 1
            if verdict.rating is None:
                failed += 1
            else:
                ratings[g].append(verdict.rating)
    print(f"The judge on {model}, temperature {temperature}, {HELDOUT}\n")
    print(
        "| judge | calls | no verdict | paraphrase mean | contradiction mean "
        "| off-persona mean | AUC para > off | AUC para > contra | s/call mean |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    means = [fmt(statistics.fmean(ratings[g])) if ratings[g] else "-" for g in GROUPS]
    para = ratings["paraphrase"]
    print(
        f"| {model} | {calls} | {failed / calls:.0%} | {' | '.join(means)} "
        f"| {fmt(auc(para, ratings['off_persona']))} "
        f"| {fmt(auc(para, ratings['contradiction']))} | {statistics.fmean(seconds):.1f} |"
    )
    for g in GROUPS:
        counts = {r: ratings[g].count(r) for r in range(1, 6)}
        print(f"\n{g}: " + ", ".join(f"{n}x{r}" for r, n in counts.items() if n), end="")
    print("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ceiling-quantile",
        type=float,
        default=0.5,
        help="quantile of answer-paraphrase similarity taken as the ceiling (0.5: median)",
    )
    parser.add_argument(
        "--measured",
        action="store_true",
        help="calibrate with the priors measured here rather than those in PRIORS",
    )
    parser.add_argument("--judge", action="store_true", help="run the judge (54 model calls)")
    parser.add_argument("--judge-model", default="llamacpp:gemma3-270m")
    parser.add_argument("--judge-temperature", type=float, default=0.0)
    args = parser.parse_args()

    main_rows, held = load(MAIN), load(HELDOUT)
    sims = {kind: similarity(kind, [*main_rows, *held]) for kind in KINDS}
    print_priors(main_rows, sims, args.ceiling_quantile)
    priors = {
        kind: measure_priors(main_rows, sims[kind], args.ceiling_quantile)
        if args.measured
        else calibration.prior(kind)
        for kind in KINDS
    }
    print(
        "Calibrating with null / ceiling: "
        + ", ".join(f"{k} {fmt(v.null)} / {fmt(v.ceiling)}" for k, v in priors.items())
        + "\n"
    )
    print_agreement({"main": main_rows, "held-out": held}, sims, priors)
    print_checkins(held, sims, priors)
    if args.judge:
        print_judge(held, args.judge_model, args.judge_temperature)


if __name__ == "__main__":
    main()
