"""The service's HTTP endpoint: ``/metrics`` and ``/healthz`` (alias ``/health``).

It runs on a thread of its own, so it answers even while the event loop is busy. It only
reads what it is given (:class:`Observed`), so it does not depend on the worker.
"""

from __future__ import annotations

import functools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST

from loopsim.errors import LoopsimError
from loopsim.service.metrics import Metrics


class Observed(Protocol):
    """What the endpoint reports on: the service's metrics and its health."""

    metrics: Metrics

    def health(self) -> dict[str, Any]: ...


class HttpEndpoint:
    """/metrics and /healthz on a thread of their own, so they answer even when busy."""

    def __init__(self, service: Observed, host: str, port: int) -> None:
        handler = functools.partial(_Handler, service)
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise LoopsimError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, service: Observed, *args: Any) -> None:
        self.service = service
        super().__init__(*args)

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, self.service.metrics.render(), CONTENT_TYPE_LATEST)
        elif self.path in ("/healthz", "/health"):
            health = self.service.health()
            code = 200 if health["status"] == "ok" else 503
            self._send(code, json.dumps(health).encode(), "application/json")
        else:
            self._send(404, b'{"error": "not found"}', "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass
