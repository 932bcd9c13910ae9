"""The webhook a service POSTs to when it opens a check-in.

Delivery is off the day's path: a failure is counted and logged (with the URL redacted,
since tokens live in it), never raised, so a dead receiver cannot stall a run.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from loopsim.service.metrics import Metrics

# The worker's logger, so that log lines keep the "logger" field they had before the split.
log = logging.getLogger("loopsim.service.worker")


class Webhook:
    """POSTs a JSON payload, with a timeout and retries, off the day's path."""

    def __init__(self, url: str, metrics: Metrics, *, timeout: float = 5.0, attempts: int = 4):
        self.url = url
        self.metrics = metrics
        self.timeout = timeout
        self.attempts = attempts

    @staticmethod
    def _worth_retrying(exc: BaseException) -> bool:
        if isinstance(exc, httpx.HTTPStatusError):
            return exc.response.status_code == 429 or exc.response.status_code >= 500
        return isinstance(exc, httpx.TransportError)

    async def send(self, payload: dict[str, Any]) -> bool:
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(self._worth_retrying),
                    stop=stop_after_attempt(self.attempts),
                    wait=wait_random_exponential(multiplier=0.5, max=10),
                    reraise=True,
                ):
                    with attempt:
                        response = await client.post(self.url, json=payload)
                        response.raise_for_status()
        except (httpx.HTTPError, ValueError) as exc:
            self.metrics.webhooks.labels(outcome="failed").inc()
            log.warning(
                "webhook to %s failed: %s",
                redact(self.url),
                type(exc).__name__,
                extra={"event": "webhook.failed"},
            )
            return False
        self.metrics.webhooks.labels(outcome="sent").inc()
        return True


def redact(url: str) -> str:
    """A URL fit for a log line: no user, password or query string (tokens live there)."""
    try:
        parsed = httpx.URL(url)
        return str(parsed.copy_with(username=None, password=None, query=None))
    except Exception:
        return "(webhook url)"
