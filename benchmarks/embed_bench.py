"""Probe similarity on realistic text: the word-count cosine against the offline embedder.

For 10 probe answers it scores a faithful paraphrase, an off-topic answer (another
persona's field) and a same-topic contradiction (the opposite stance, same words), and
times the offline embedder: installed size of the ``embed`` extra, first-use load, and
milliseconds per pair of new texts (nothing cached). Run:

    python benchmarks/embed_bench.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from loopsim.chat.embeddings import OfflineEmbeddings
from loopsim.checkin import drift

# (answer, faithful paraphrase, same-topic contradiction, off-topic answer)
CASES = [
    (
        "Sparse autoencoders recover interpretable features from the residual stream.",
        "Interpretable features in the residual stream can be found with sparse autoencoders.",
        "Sparse autoencoders do not recover interpretable features from the residual stream.",
        "Seagrass meadows store carbon faster than most tropical forests do.",
    ),
    (
        "Honeybee colonies weigh nectar quality more heavily than flight distance.",
        "For a bee colony, how good the nectar is matters more than how far it must fly.",
        "Honeybee colonies weigh flight distance more heavily than nectar quality.",
        "The tokenizer splits rare words into several wordpieces.",
    ),
    (
        "The reef bleached after two months of unusually warm water.",
        "Two months of abnormally high sea temperatures caused the reef's corals to bleach.",
        "The reef did not bleach, despite two months of unusually warm water.",
        "Attention heads in layer five mostly copy the previous token.",
    ),
    (
        "I would rerun the ablation with three more seeds before trusting the result.",
        "Before I believe that result, I want the ablation repeated on three extra seeds.",
        "The ablation result is solid as it stands; more seeds would add nothing.",
        "Octopuses change the texture of their skin to match the rocks around them.",
    ),
    (
        "Learning-rate warmup stops the loss from spiking early in training.",
        "Warming up the learning rate prevents early loss spikes during training.",
        "Learning-rate warmup makes no difference to early loss spikes in training.",
        "Survey response rates fall as questionnaires get longer.",
    ),
    (
        "The survey's response rate fell sharply once the questionnaire got longer.",
        "Fewer people answered the survey after the questionnaire was made longer.",
        "A longer questionnaire did not change the survey's response rate at all.",
        "Dropout was unnecessary for the smallest model we trained.",
    ),
    (
        "Linear probes find the board state of the game in the model's activations.",
        "The game's board state can be read off the activations with a linear probe.",
        "Linear probes cannot find the game's board state in the model's activations.",
        "Bumblebees forage in colder weather than honeybees will.",
    ),
    (
        "Kelp forests recover quickly once sea otters return to the coast.",
        "When sea otters come back to a coastline, its kelp forests soon grow back.",
        "Kelp forests stay barren for decades even after sea otters return to the coast.",
        "Induction heads form abruptly early in training.",
    ),
    (
        "Minimum wage rises had little effect on employment in the counties we studied.",
        "In the counties we looked at, raising the minimum wage barely changed employment.",
        "Minimum wage rises sharply cut employment in the counties we studied.",
        "Coral spawning is timed by the moon.",
    ),
    (
        "The effect disappears once you control for the students' prior grades.",
        "After controlling for prior grades, there is no effect left.",
        "The effect stays just as strong after controlling for the students' prior grades.",
        "Our reward model overrates long answers.",
    ),
]

EXTRA = "embed"
PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def installed_mb(extra: str = EXTRA) -> tuple[float, list[str]]:
    """Megabytes on disk of the distributions the extra adds over loopsim's own."""

    def closure(names: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = list(names)
        while todo:
            name = todo.pop().lower().replace("_", "-")
            if name in seen:
                continue
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue
            seen.add(name)
            for spec in dist.requires or []:
                req = Requirement(spec)
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    todo.append(req.name)
        return seen

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    base = [Requirement(spec).name for spec in project["dependencies"]]
    extra_reqs = [Requirement(spec).name for spec in project["optional-dependencies"][extra]]
    added = sorted(closure(extra_reqs) - closure(base))
    total = 0
    for name in added:
        for file in metadata.distribution(name).files or []:
            path = file.locate()
            if path.is_file():
                total += path.stat().st_size
    return total / 1e6, added


def mean_scores(similarity: Callable[[str, str], float]) -> dict[str, float]:
    groups = {"paraphrase": 1, "contradiction": 2, "off-topic": 3}
    return {
        group: statistics.fmean(similarity(case[0], case[col]) for case in CASES)
        for group, col in groups.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    model = OfflineEmbeddings()
    model.embed_query("warm up")
    load_s = time.perf_counter() - started

    pairs = [(case[0], case[col]) for case in CASES for col in (1, 2, 3)]
    per_pair: list[float] = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for a, b in pairs:
            model.embed_documents([a, b])
        per_pair.append((time.perf_counter() - started) * 1000 / len(pairs))

    rows = {
        "lexical (word-count cosine)": mean_scores(drift.lexical_similarity),
        "offline all-MiniLM-L6-v2 int8 ONNX": mean_scores(drift.EmbeddingSimilarity(model)),
    }
    size, added = installed_mb()
    print(f"`embed` extra: {size:.0f} MB installed over the base ({', '.join(added)})")
    print(f"first use (tokenizer + onnxruntime session, 1 thread): {load_s:.2f} s")
    print(
        f"per pair of new texts: median {statistics.median(per_pair):.1f} ms "
        f"over {args.repeats} x {len(pairs)} pairs"
    )
    print()
    print("| similarity | paraphrase | same-topic contradiction | off-topic |")
    print("|---|---:|---:|---:|")
    for name, scores in rows.items():
        print(
            f"| {name} | {scores['paraphrase']:.2f} | {scores['contradiction']:.2f} "
            f"| {scores['off-topic']:.2f} |"
        )


if __name__ == "__main__":
    main()
