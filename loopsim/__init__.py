"""loopsim: groundhog-day iterated amplification.

A loop wakes a fresh, memoryless researcher day after day at a fixed external time. Its
only memory is a hash-chained written record in SQL; humans check in now and then.
"""

from __future__ import annotations

__version__ = "0.1.0"

from loopsim.config import Settings
from loopsim.db import Database, upgrade
from loopsim.errors import LoopsimError
from loopsim.loop import DayResult, Loop
from loopsim.schemas import DayReport, RunSpec, load_spec
from loopsim.store import Store

__all__ = [
    "Database",
    "DayReport",
    "DayResult",
    "Loop",
    "LoopsimError",
    "RunSpec",
    "Settings",
    "Store",
    "__version__",
    "load_spec",
    "upgrade",
]
