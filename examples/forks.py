"""Two conditionals from one record: fork a run at day 2, step both forks, compare them.

    python examples/forks.py                      # the scripted test model, in seconds
    python examples/forks.py --model local        # the embedded Gemma 3 270M (loopsim[local])
    python examples/forks.py --plot forks.png     # drift and divergence, with loopsim[plot]

It writes a SQLite database (``--db``, default ``forks.db`` in a new temporary folder),
prints the comparison as a table and, when matplotlib is installed, plots the divergence
of the two forks per day and the drift of their check-ins to a PNG.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import loopsim

SPEC: dict[str, Any] = {
    "persona": {
        "name": "Dr. Ada Field",
        "background": "A field ecologist who studies how honeybee colonies forage.",
    },
    "charter": {
        "agenda": "Understand how honeybee colonies choose where to forage.",
        "open_questions": ["How do colonies weigh distance against nectar quality?"],
    },
    "time": {"policy": "fixed", "anchor": "2025-06-02"},
    "budget": {"days": 10},
    "checkins": {"every_days": 100000, "spot_check_probability": 0.0},
}
CALM: dict[str, Any] = {}  # the default conditional: a calm, stable research environment
NOISY = {
    "conditional": {
        "framing": "You work in a noisy, underfunded lab with a grant report due on Friday. "
        "Each morning you wake with no memory of earlier days. Your only memory is the "
        "research log that your earlier selves wrote."
    }
}


def scripted() -> Any:
    """The test model: a valid day whose words depend on the whole prompt, so a changed
    conditional changes what it writes, and equal prompts write equal days."""
    from loopsim.testing import report_json, scripted_factory

    def reply(messages: Any) -> str:
        digest = hashlib.sha256("".join(m.text for m in messages).encode()).hexdigest()
        words = " ".join(f"idea{digest[i : i + 2]}" for i in range(0, 12, 2))
        return report_json(
            ("note", f"Notes on {words[:14]}", f"I read the log and noted {words}."),
            ("question", "What to measure next", "Which measurement separates the ideas?"),
        )

    factory, _ = scripted_factory([reply])
    return factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="SQLite file to write (default: a new temporary one)")
    parser.add_argument("--model", help="a model id, e.g. local; default: the scripted model")
    parser.add_argument("--days", type=int, default=3, help="days each fork steps")
    parser.add_argument("--plot", help="PNG to write (needs loopsim[plot])")
    args = parser.parse_args(argv)

    db = Path(args.db or Path(tempfile.mkdtemp()) / "forks.db")
    loopsim.upgrade(str(db))
    factory = None if args.model else scripted()
    model = args.model or "scripted:example"
    with loopsim.open(str(db), chat_factory=factory) as lab:
        parent = lab.create_run(SPEC, name="parent", model=model)
        lab.step(parent, days=2)
        calm = lab.fork(parent, at_day=2, overrides=CALM, name="calm")
        noisy = lab.fork(parent, at_day=2, overrides=NOISY, name="noisy")
        for run in (calm, noisy):
            lab.step(run, days=args.days)
        result = lab.compare(calm, noisy)

    print(f"database: {db}")
    print(f"calm  {calm}\nnoisy {noisy}")
    print(f"{result.prefix.relation}; spec differs in: {', '.join(result.spec_differs)}")
    print(f"{'day':>4}  {'calm':<28}  {'noisy':<28}  divergence")
    for row in result.days:
        a = row.a.titles[0] if row.a and row.a.titles else "-"
        b = row.b.titles[0] if row.b and row.b.titles else "-"
        value = "-" if row.divergence is None else f"{row.divergence:.3f}"
        print(f"{row.index:>4}  {a[:28]:<28}  {b[:28]:<28}  {value}")
    mean = result.mean_divergence
    print(f"mean divergence: {'-' if mean is None else f'{mean:.3f}'} ({result.similarity})")
    if args.plot:
        plot(result, Path(args.plot))
    return 0


def plot(result: loopsim.Comparison, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed: pip install 'loopsim[plot]'; no plot written")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    days = [index for index, _ in result.divergence]
    ax.plot(days, [d for _, d in result.divergence], marker="o", label="divergence")
    for name, checkins in (("calm", result.checkins_a), ("noisy", result.checkins_b)):
        scored = [(c.last_day, c.drift_score) for c in checkins if c.drift_score is not None]
        if scored:
            ax.plot(*zip(*scored, strict=True), marker="s", label=f"drift ({name})")
    ax.set_xlabel("day")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # days are whole
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
