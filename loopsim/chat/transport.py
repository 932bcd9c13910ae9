"""aiohttp sessions for the light client's calls on the event loop of ``loopsim serve``.

At C = 64 runs against a 50 ms server, httpx's async stack (anyio, httpcore and h11, all
pure Python) held a third of the worker's GIL time: about 0.6 ms of CPU a request against
0.15 ms for aiohttp, whose HTTP parser is compiled (``benchmarks/README.md``, "aiohttp for
the service's calls"). The light client (:mod:`loopsim.chat.compat`) sends its requests
through aiohttp inside a :func:`scope` and through httpx everywhere else.

An aiohttp session belongs to the event loop that opened it and must be closed on that
loop, or it says so on stderr when collected. So the sessions live in a scope with a
beginning and an end: ``loopsim serve`` opens one around its whole run and closes it after
its last day; the tasks it starts inherit it (a context variable). Outside a scope (the
CLI's own event loops, library users calling ``ainvoke``) nothing here is used and the
light client keeps its httpx pools, which need no closing.

Replies come back as ``httpx.Response`` and failures as httpx's exceptions, so
:mod:`loopsim.chat.faults` reads statuses, ``Retry-After`` and refused connections the
same way on both paths. aiohttp and httpx are imported at the first call, not when the
service starts: the first claim need not wait for them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ssl
from collections.abc import AsyncIterator, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp
    import httpx

_SCOPE: ContextVar[Sessions | None] = ContextVar("loopsim_aiohttp_sessions", default=None)

REPLY_LIMIT = 16 * 1024 * 1024
"""The most bytes of one reply that are read. A completion capped at ``max_tokens`` is
kilobytes; a server that sends without end would fill the memory (and the kernel's OOM
killer then ends `loopsim serve` with every run it holds). More is a failed call."""


def too_long(url: str) -> httpx.ReadError:
    import httpx

    return httpx.ReadError(f"POST {url}: reply longer than {REPLY_LIMIT:,} bytes; not read")


def whole(response: httpx.Response, chunks: Iterable[bytes], url: str) -> httpx.Response:
    """``response`` read through :data:`REPLY_LIMIT`, from its raw (undecoded) bytes."""
    body, size = [], 0
    for chunk in chunks:
        size = _counted(size, chunk, url)
        body.append(chunk)
    return _read(response, body)


async def awhole(
    response: httpx.Response, chunks: AsyncIterator[bytes], url: str
) -> httpx.Response:
    """:func:`whole` for an async reply."""
    return _read(response, [chunk async for chunk in _capped(chunks, url)])


async def _capped(chunks: AsyncIterator[bytes], url: str) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in chunks:
        size = _counted(size, chunk, url)
        yield chunk


def _counted(size: int, chunk: bytes, url: str) -> int:
    """Bytes read so far with ``chunk``; past :data:`REPLY_LIMIT`, the call fails."""
    size += len(chunk)
    if size > REPLY_LIMIT:
        raise too_long(url)
    return size


def _read(response: httpx.Response, body: list[bytes]) -> httpx.Response:
    import httpx

    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=b"".join(body),
        request=response.request,
    )


class Sessions:
    """One aiohttp session per server and client settings, opened at its first request."""

    def __init__(self) -> None:
        self._open: dict[tuple[Any, ...], tuple[aiohttp.ClientSession, httpx.Request]] = {}
        self.closed = False

    def _session(
        self, url: str, headers: dict[str, str], timeout: float, tls: ssl.SSLContext | None
    ) -> tuple[aiohttp.ClientSession, httpx.Request]:
        key = (url, tuple(sorted(headers.items())), timeout, id(tls))
        held = self._open.get(key)
        if held is None:
            import aiohttp
            import httpx

            # No cap on connections: the service bounds the calls in flight itself. A
            # timeout between bytes, as httpx's read timeout is, not one for the whole
            # call: a long generation that keeps its connection is not cut off.
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ssl=tls if tls is not None else False),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout),
                auto_decompress=False,  # the raw bytes are capped, and httpx decodes them
            )
            # The request every reply names (error messages show its URL): built once.
            held = (session, httpx.Request("POST", url))
            self._open[key] = held
        return held

    async def post(
        self,
        url: str,
        content: bytes,
        *,
        headers: dict[str, str],
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> httpx.Response:
        """POST ``content`` to ``url``; the whole reply, read. Transport failures raise
        the httpx exception of the same kind, chained to aiohttp's."""
        import aiohttp
        import httpx

        if self.closed:
            raise httpx.ConnectError(f"POST {url}: the service closed its connections")

        session, request = self._session(url, headers, timeout, tls)
        try:
            async with session.post(url, data=content) as reply:
                # Raw bytes, through the cap; httpx decodes them as its headers say.
                raw = [chunk async for chunk in _capped(reply.content.iter_any(), url)]
                return httpx.Response(
                    reply.status,
                    headers=list(reply.raw_headers),
                    content=b"".join(raw),
                    request=request,
                )
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(f"POST {url}: {exc}") from exc
        except aiohttp.ClientConnectorError as exc:  # its cause is the socket's error
            raise httpx.ConnectError(f"POST {url}: {exc}") from exc
        except aiohttp.ClientError as exc:  # reset, disconnected, a body cut short
            raise httpx.ReadError(f"POST {url}: {exc}") from exc

    async def close(self) -> None:
        self.closed = True
        held, self._open = list(self._open.values()), {}
        for session, _ in held:
            await session.close()


@contextlib.asynccontextmanager
async def scope() -> AsyncIterator[Sessions | None]:
    """Send the light client's async calls through aiohttp until the block ends, then
    close its connections. Without aiohttp installed, a scope that changes nothing."""
    if importlib.util.find_spec("aiohttp") is None:
        yield None
        return
    sessions = Sessions()
    token = _SCOPE.set(sessions)
    try:
        yield sessions
    finally:
        _SCOPE.reset(token)
        await sessions.close()


def current() -> Sessions | None:
    """The sessions of the scope this task runs in, if any."""
    return _SCOPE.get()
