"""Run specs parsed once per process, for as long as the stored spec stays the same.

A run's spec is stored as JSON on its row and validated into a :class:`RunSpec` where it is
used. Validating it every day cost a step more than reading it; a spec changes only when a
human amends it at a check-in (or a fork is made with another), so the parsed spec is kept
with the canonical JSON it came from and used again only while the stored JSON is byte for
byte the same. Comparing the text is sure (an amendment, a fork or a hand edit of the row
all change it) and costs a small fraction of a validation. A worker's turn asks twice for
the same loaded row (the check-in test, then the plan): the second ask, given the very
dict the first was compared with, is answered without encoding it again (loopsim never
changes a loaded spec in place; an amendment assigns a new one).
"""

from __future__ import annotations

from loopsim.ids import canonical_json
from loopsim.record.tables import Run
from loopsim.schemas import RunSpec


class SpecCache:
    """Run id -> the run's parsed spec and the canonical JSON it was parsed from."""

    def __init__(self) -> None:
        # run id -> (canonical JSON, parsed spec, the loaded dict last compared)
        self._known: dict[str, tuple[bytes, RunSpec, object]] = {}

    def __call__(self, run: Run) -> RunSpec:
        """``RunSpec.model_validate(run.spec)``, from the cache while the spec is unchanged.
        Callers must not modify the spec returned: later days share it."""
        known = self._known.get(run.id)
        if known is not None and known[2] is run.spec:
            return known[1]
        text = canonical_json(run.spec)
        spec = known[1] if known is not None and known[0] == text else None
        if spec is None:
            spec = RunSpec.model_validate(run.spec)
        self._known[run.id] = (text, spec, run.spec)
        return spec
