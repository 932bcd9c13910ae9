"""Seeded samples of the text that tokenizes worst: code, JSON, Markdown tables, LaTeX,
numbers and hashes, beside plain prose.

A byte estimate of tokens is close on English prose and far too low on these, so they
are what a token counter is calibrated against (``benchmarks/token_estimate.py``) and
what a record is filled with to test that a view never overflows (``tests/test_tokens.py``).
Every sample is a pure function of its kind and seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


WORDS = _words(
    "the colony foragers nectar distance quality dance waggle hive flower patch sugar "
    "concentration recruitment scouts return rate observation experiment hypothesis "
    "measure compare marked bees feeder meters minutes temperature season weather pollen "
    "signal decision threshold model estimate variance sample trial result evidence "
    "suggests although however because whether therefore carefully roughly independent"
)
IDENTIFIERS = _words(
    "count rate total_ms feederDistance nectarScore self.buffer np.mean df.groupby "
    "visits_by_day maxIter x_hat alpha_1 beta2 get_user_by_id HTTPClient JSONDecoder "
    "parseXMLStream tmp idx k v acc"
)
GREEK = _words(r"\alpha \beta \gamma \delta \epsilon \theta \lambda \mu \sigma \tau \phi \omega")
SYMBOLS = _words("≤ ≥ ≈ × ± → ∑ ∫ ∂ ∞ √ ° µ ∈ ∀")
BASE64 = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0123456789+/"
KINDS = ("prose", "code", "json", "table", "latex", "numbers", "hashes", "unicode")


def _number(rng: random.Random) -> str:
    form = rng.randrange(6)
    if form == 0:
        return str(rng.randrange(10**9))
    if form == 1:
        return f"{rng.uniform(-1000, 1000):.{rng.randrange(1, 7)}f}"
    if form == 2:
        return f"{rng.uniform(0, 1):.3e}"
    if form == 3:
        return f"{rng.randrange(10**7):,}"
    if form == 4:
        return f"20{rng.randrange(10, 40)}-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}"
    return f"{rng.randrange(100)}.{rng.randrange(100)}%"


def prose(rng: random.Random, size: int) -> str:
    out: list[str] = []
    while sum(map(len, out)) < size:
        words = [rng.choice(WORDS) for _ in range(rng.randrange(6, 20))]
        out.append(" ".join(words).capitalize() + rng.choice([".", ".", ",", ";", "?"]) + " ")
    return "".join(out).strip()


def code(rng: random.Random, size: int) -> str:
    lines: list[str] = []
    while sum(map(len, lines)) < size:
        name = rng.choice(IDENTIFIERS).replace(".", "_")
        args = ", ".join(rng.sample(IDENTIFIERS[:12], rng.randrange(1, 4))).replace(".", "_")
        lines.append(f"def {name}_{rng.randrange(99)}({args}):")
        for _ in range(rng.randrange(2, 6)):
            target, source = rng.choice(IDENTIFIERS), rng.choice(IDENTIFIERS)
            op = rng.choice(["+=", "=", "-=", "*=", "//=", "**="])
            value = rng.choice([_number(rng), f"{source}[{rng.randrange(9)}]", f"{source}()"])
            indent = " " * rng.choice([4, 8, 12])
            lines.append(f"{indent}{target} {op} ({value}) if {source} != {{}} else [None]")
        lines.append(f"    return {{'{name}': {rng.choice(IDENTIFIERS)}, 'n': {_number(rng)}}}")
    return "\n".join(lines)


def json_text(rng: random.Random, size: int) -> str:
    items: list[str] = []
    while sum(map(len, items)) < size:
        key = rng.choice(IDENTIFIERS)
        value = rng.choice(
            [
                _number(rng).replace(",", ""),
                "true",
                "null",
                f'"{rng.choice(WORDS)}"',
                f"[{_number(rng).replace(',', '')}, {rng.randrange(99)}]",
            ]
        )
        items.append(f'{{"{key}": {value}, "id": {rng.randrange(10**6)}}}')
    return "[" + ", ".join(items) + "]"


def table(rng: random.Random, size: int) -> str:
    columns = rng.randrange(3, 7)
    head = [rng.choice(WORDS) for _ in range(columns)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * columns]
    while sum(map(len, rows)) < size:
        rows.append("| " + " | ".join(_number(rng) for _ in range(columns)) + " |")
    return "\n".join(rows)


def latex(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    while sum(map(len, parts)) < size:
        a, b = rng.choice(GREEK), rng.choice(GREEK)
        parts.append(
            rng.choice(
                [
                    f"$\\frac{{{a}_{{{rng.randrange(9)}}}}}{{{b}^2 + {rng.randrange(99)}}}$",
                    f"$$\\sum_{{i=1}}^{{n}} {a}_i x_i^{{{rng.randrange(2, 9)}}} \\leq {b}$$",
                    f"\\begin{{align}} {a} &= \\int_0^\\infty e^{{-{b} t}}\\,dt \\end{{align}}",
                    f"$\\mathbb{{E}}[{a}] = {_number(rng)} \\pm {rng.randrange(99)}$",
                ]
            )
        )
    return " ".join(parts)


def numbers(rng: random.Random, size: int) -> str:
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(_number(rng))
    return rng.choice([" ", ", ", "\n", "; "]).join(out)


def hashes(rng: random.Random, size: int) -> str:
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(
            rng.choice(
                [
                    f"{rng.getrandbits(256):064x}",
                    f"sha256:{rng.getrandbits(64):016x}",
                    "".join(rng.choice(BASE64) for _ in range(24)),
                    f"01J{rng.getrandbits(100):X}",
                ]
            )
        )
    return " ".join(out)


def unicode(rng: random.Random, size: int) -> str:
    out: list[str] = []
    while sum(map(len, out)) < size:
        out.append(
            rng.choice(
                [
                    f"{rng.choice(WORDS)} {rng.choice(SYMBOLS)} {_number(rng)}",
                    "Zürich café naïve déjà vu",
                    "蜜蜂 采集 花蜜 距离",
                    f"{rng.randrange(40)}°C ± {rng.randrange(9)} µL",
                    "🐝🌼",
                ]
            )
        )
    return " ".join(out)


GENERATORS: dict[str, Callable[[random.Random, int], str]] = {
    "prose": prose,
    "code": code,
    "json": json_text,
    "table": table,
    "latex": latex,
    "numbers": numbers,
    "hashes": hashes,
    "unicode": unicode,
}


def sample(kind: str, seed: int, size: int = 600) -> str:
    """A sample of ``kind`` (one of :data:`KINDS`) of about ``size`` characters."""
    return GENERATORS[kind](random.Random(f"{kind}:{seed}"), size)
