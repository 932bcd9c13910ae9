"""loopsim: groundhog-day iterated amplification.

A loop wakes a fresh, memoryless researcher day after day at a fixed external time. Its
only memory is a hash-chained written record in SQL; humans check in now and then.

``loopsim.open(url)`` is the Python API (:mod:`loopsim.api`, docs/python-api.md). The public
names below are imported on first use, not with the package: the ``loopsim``
command imports this package before it can handle Ctrl-C, so importing it must take no
time (see ``loopsim.__main__``).
"""

from __future__ import annotations

__version__ = "0.1.0"

# Not typing.TYPE_CHECKING: even importing typing takes long enough to be hit by Ctrl-C
# before loopsim.__main__ can catch it. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from loopsim.api import CheckinInfo, Loopsim, RunInfo, open
    from loopsim.checkin.decision import Outcome
    from loopsim.config import Settings
    from loopsim.errors import LoopsimError
    from loopsim.exports.compare import Comparison
    from loopsim.loop import Loop
    from loopsim.record.db import Database, upgrade
    from loopsim.record.store import Store
    from loopsim.researcher.day import DayResult
    from loopsim.schemas import DayReport, RunSpec, load_spec

_HOME = {
    "CheckinInfo": "loopsim.api",
    "Comparison": "loopsim.exports.compare",
    "Database": "loopsim.record.db",
    "DayReport": "loopsim.schemas",
    "DayResult": "loopsim.researcher.day",
    "Loop": "loopsim.loop",
    "Loopsim": "loopsim.api",
    "LoopsimError": "loopsim.errors",
    "Outcome": "loopsim.checkin.decision",
    "RunInfo": "loopsim.api",
    "RunSpec": "loopsim.schemas",
    "Settings": "loopsim.config",
    "Store": "loopsim.record.store",
    "load_spec": "loopsim.schemas",
    "open": "loopsim.api",
    "upgrade": "loopsim.record.db",
}

__all__ = [
    "CheckinInfo",
    "Comparison",
    "Database",
    "DayReport",
    "DayResult",
    "Loop",
    "Loopsim",
    "LoopsimError",
    "Outcome",
    "RunInfo",
    "RunSpec",
    "Settings",
    "Store",
    "__version__",
    "load_spec",
    "open",
    "upgrade",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'loopsim' has no attribute {name!r}")
    value = getattr(__import__(home, fromlist=[name]), name)
    globals()[name] = value
    return value
