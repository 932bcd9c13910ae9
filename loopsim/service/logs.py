"""How ``loopsim serve`` logs: plain text, or one JSON object per line.

The JSON lines carry the structured fields the service passes as ``extra`` (the
``event`` and the run, day, lease... it concerns), so a log pipeline can filter on them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

_FIELDS = (
    "event",
    "run_id",
    "day",
    "worker",
    "checkin_id",
    "lease",
    "latency_ms",
    "entries",
    "error",
    "model",
    "wait_s",
    "address",
    "owner",
    "runs",
    "loop",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _FIELDS:
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class _Worker(logging.Filter):
    """Names the worker on every line it logs, not only on the lines that pass it: under
    ``--processes`` several workers' lines share one stderr."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "worker"):
            record.worker = self.worker
        return True


def configure_logging(fmt: str = "text", level: str = "INFO", worker: str | None = None) -> None:
    """Log lines to stderr as ``fmt`` (text or json); ``worker`` names a worker process
    on each of its lines."""
    handler = logging.StreamHandler()
    if worker is not None:
        handler.addFilter(_Worker(worker))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # Under --processes the workers' lines interleave on one stderr: each says whose.
        named = "[%(worker)s] " if worker is not None else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {named}%(message)s"))
    root = logging.getLogger("loopsim")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
