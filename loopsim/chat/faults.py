"""Endpoint faults: which errors of a model call are worth asking again, how long to wait,
and what a server's refusal of the ``response_format`` it was sent looks like.

Retried: 408, 409, 425, 429 and 5xx replies, timeouts, refused or reset connections,
truncated or stalled bodies and garbled JSON. A client error such as 400 or 401 is not,
nor a server that refuses the ``response_format`` (:meth:`ChatHandle.format_refused
<loopsim.chat.handle.ChatHandle.format_refused>` decides, from :data:`FORMAT_WORDS`).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx
from tenacity import RetryCallState


def connection_refused(exc: BaseException) -> bool:
    """Was the connection refused: nothing listening at the address? The provider SDKs
    wrap the socket's error, so the whole chain of causes is looked through."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status a provider's exception carries, if any (openai, anthropic, httpx)."""
    for candidate in (exc, getattr(exc, "response", None)):
        code = getattr(candidate, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Would the same call, asked again, plausibly succeed?"""
    status = status_of(exc)
    if status is not None and status < 300:  # a success whose body was cut or garbled
        return True
    if status is not None:
        return status in RETRY_STATUSES or status >= 500
    if isinstance(exc, httpx.TransportError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, json.JSONDecodeError):  # a 200 whose body was cut or garbled
        return True
    # The openai SDK wraps transport failures in its own classes. Only an SDK already
    # imported can have raised one: importing it here, on the event loop of `loopsim
    # serve`, held the loop for seconds on a busy machine (a day cancelled at stop asks
    # this of its CancelledError), well past the stop's grace period.
    openai = sys.modules.get("openai")
    kinds = tuple(
        kind
        for kind in (
            getattr(openai, "APIConnectionError", None),
            getattr(openai, "APIResponseValidationError", None),
        )
        if isinstance(kind, type)
    )
    return bool(kinds) and isinstance(exc, kinds)


# What a server's error says when it refuses the response_format it was sent: the field's
# name, or llama-cpp-python's "Input should be 'text' or 'json_object'".
FORMAT_WORDS = ("response_format", "json_schema", "'json_object'")
# The setting to try after each structured mode, as LOOPSIM_RESPONSE_FORMAT names it.
FORMAT_FALLBACK = {
    "openai": ("json_schema", "json_object"),
    "openai-json-object": ("json_object", "none"),
}


def error_text(exc: BaseException) -> str:
    """All an exception says, on one line: its text and, for an HTTP error, the message
    of the server's JSON body (which the SDK may not have put in its text)."""
    parts = [str(exc)]
    body = getattr(exc, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message.strip() and message.strip() not in parts[0]:
        parts.append(message)
    return " ".join(" ".join(parts).split())


def retry_after(exc: BaseException) -> float | None:
    """Seconds a ``Retry-After`` (or ``retry-after-ms``) header asks for, if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to retry one model call. ``attempts`` counts the first try."""

    attempts: int = 5
    initial: float = 1.0
    max_wait: float = 60.0

    def wait(self, state: RetryCallState) -> float:
        """The backoff, or what the server's Retry-After asks for if that is longer: a
        server that says "Retry-After: 0" under a burst of 429s must not turn the backoff
        off (a retry storm against an overloaded endpoint)."""
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after(exc) if exc is not None else None
        backoff = self.initial * 2.0 ** (state.attempt_number - 1)
        backoff = min(self.max_wait, backoff) * random.uniform(0.5, 1.0)  # full-ish jitter
        if asked is not None:
            return min(max(asked, backoff), self.max_wait)
        return backoff
