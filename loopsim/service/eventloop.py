"""The event loop `loopsim serve` runs on.

One worker's throughput is bound by one core once many runs wait on the model at once,
and asyncio's own loop (its scheduling, its sockets, its thread hand-offs) is a share of
that core. uvloop, installed with the ``uvloop`` extra, does the same work in libuv:
``auto`` (the default) takes it when it is installed and asyncio's loop otherwise;
``LOOPSIM_EVENT_LOOP`` can ask for either by name.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from loopsim.errors import LoopsimError

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


class EventLoopUnavailable(LoopsimError):
    """The event loop asked for is not installed."""


def new_event_loop(choice: EventLoopChoice = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop of the kind ``choice`` names (see the module docstring)."""
    if choice == "asyncio":
        return asyncio.new_event_loop()
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise EventLoopUnavailable(
                "LOOPSIM_EVENT_LOOP=uvloop, but uvloop is not installed; "
                "`pip install 'loopsim[uvloop]'` adds it, or unset the variable"
            ) from None
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what a worker's start line says it runs on."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
