"""How one ``loopsim serve`` worker runs: its id, how many runs at once, its lease, its
turns, and its HTTP endpoint."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ServiceConfig:
    worker_id: str = field(default_factory=default_worker_id)
    concurrency: int = 4
    lease_seconds: float = 30.0
    poll_seconds: float = 1.0
    grace_seconds: float = 10.0
    yield_after_days: int = 2  # 0: never yield a run while it can go on
    http_host: str = "127.0.0.1"
    http_port: int | None = 9464  # None: no HTTP endpoint
