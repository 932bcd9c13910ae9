"""Calibrate the offline token estimate against Gemma's real tokenizer.

For each kind of text in :mod:`loopsim.testing.texts` (prose, code, JSON, Markdown
tables, LaTeX, numbers, hashes, non-ASCII), seeded samples of several sizes, and the
paragraphs of ``docs/`` (real prose, with some code) are counted three ways: Gemma 3's
tokenizer (llama.cpp, the GGUF loaded vocabulary-only), the old estimate (a third of the
UTF-8 bytes) and :func:`loopsim.chat.tokens.estimate_tokens`. The table gives each
estimate's ratio to the real count (min, mean) and how many samples it under-counted;
the estimate must under-count none (the script exits 1 if it does). A second table
times each counter.

    python benchmarks/token_estimate.py [--seeds 60]

Needs the ``local`` extra (llama-cpp-python and the Gemma GGUF package).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from loopsim.chat.tokens import counter_for, estimate_tokens
from loopsim.testing.texts import KINDS, sample

SIZES = (80, 300, 1200, 4000)


def by_bytes(text: str) -> int:
    return (len(text.encode("utf-8")) + 2) // 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=60, help="samples per kind and size")
    args = parser.parse_args()
    gemma = counter_for("llamacpp:gemma3-270m")
    if not gemma.exact:
        print("error: Gemma's tokenizer is not at hand (install the 'local' extra)")
        return 1
    print(
        "| kind | samples | real tokens (mean) | bytes/token | bytes/3 ÷ real min / mean "
        "| under | estimate ÷ real min / mean | under |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0
    texts: list[str] = []
    for kind in KINDS:
        old: list[float] = []
        new: list[float] = []
        reals: list[int] = []
        size_per_token: list[float] = []
        for size in SIZES:
            for seed in range(args.seeds):
                text = sample(kind, seed, size)
                texts.append(text)
                real = gemma.count(text)
                reals.append(real)
                size_per_token.append(len(text.encode("utf-8")) / real)
                old.append(by_bytes(text) / real)
                new.append(estimate_tokens(text) / real)
        under_old = sum(r < 1 for r in old)
        under_new = sum(r < 1 for r in new)
        worst += under_new
        print(
            f"| {kind} | {len(reals)} | {statistics.mean(reals):,.0f} "
            f"| {statistics.mean(size_per_token):.2f} "
            f"| {min(old):.2f} / {statistics.mean(old):.2f} | {under_old} "
            f"| {min(new):.2f} / {statistics.mean(new):.2f} | {under_new} |"
        )
    # Real prose beside the generated kinds: the paragraphs of this project's docs.
    docs = Path(__file__).parent.parent / "docs"
    paragraphs = [
        p.strip()
        for path in sorted(docs.glob("*.md"))
        for p in path.read_text(encoding="utf-8").split("\n\n")
        if len(p.strip()) >= 200
    ]
    old = [by_bytes(p) / gemma.count(p) for p in paragraphs]
    new = [estimate_tokens(p) / gemma.count(p) for p in paragraphs]
    mean_real = statistics.mean(gemma.count(p) for p in paragraphs)
    per_token = statistics.mean(len(p.encode("utf-8")) / gemma.count(p) for p in paragraphs)
    worst += sum(r < 1 for r in new)
    print(
        f"| docs/*.md paragraphs | {len(paragraphs)} | {mean_real:,.0f} | {per_token:.2f} "
        f"| {min(old):.2f} / {statistics.mean(old):.2f} | {sum(r < 1 for r in old)} "
        f"| {min(new):.2f} / {statistics.mean(new):.2f} | {sum(r < 1 for r in new)} |"
    )
    total = sum(len(t.encode("utf-8")) for t in texts)
    print()
    print("| counter | µs per KB (all samples) |")
    print("|---|---:|")
    for name, count in (
        ("bytes/3", by_bytes),
        ("estimate", estimate_tokens),
        ("Gemma (llama.cpp vocab)", gemma.count),
    ):
        runs = []
        for _ in range(5):
            began = time.perf_counter()
            for text in texts:
                count(text)
            runs.append(time.perf_counter() - began)
        print(f"| {name} | {statistics.median(runs) / (total / 1024) * 1e6:.1f} |")
    began = time.perf_counter()
    counter_for.cache_clear()
    counter_for("llamacpp:gemma3-270m")
    print(f"\nloading the vocabulary: {(time.perf_counter() - began) * 1000:.0f} ms")
    return 1 if worst else 0


if __name__ == "__main__":
    raise SystemExit(main())
