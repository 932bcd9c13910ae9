"""loopsim: groundhog-day iterated amplification.

A loop wakes a fresh, memoryless researcher day after day at a fixed external time. Its
only memory is a hash-chained written record in SQL; humans check in now and then.

The public names below are imported on first use, not with the package: the ``loopsim``
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

    from loopsim.config import Settings
    from loopsim.errors import LoopsimError
    from loopsim.loop import DayResult, Loop
    from loopsim.record.db import Database, upgrade
    from loopsim.record.store import Store
    from loopsim.schemas import DayReport, RunSpec, load_spec

_HOME = {
    "Database": "loopsim.record.db",
    "DayReport": "loopsim.schemas",
    "DayResult": "loopsim.loop",
    "Loop": "loopsim.loop",
    "LoopsimError": "loopsim.errors",
    "RunSpec": "loopsim.schemas",
    "Settings": "loopsim.config",
    "Store": "loopsim.record.store",
    "load_spec": "loopsim.schemas",
    "upgrade": "loopsim.record.db",
}

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


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'loopsim' has no attribute {name!r}")
    value = getattr(__import__(home, fromlist=[name]), name)
    globals()[name] = value
    return value
