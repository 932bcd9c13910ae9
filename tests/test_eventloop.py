"""The event loop `loopsim serve` runs on (loopsim/service/eventloop.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from loopsim.service.eventloop import EventLoopUnavailable, loop_kind, new_event_loop

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def kind_of(choice: str) -> str:
    loop = new_event_loop(choice)  # type: ignore[arg-type]
    try:
        return loop_kind(loop)
    finally:
        loop.close()


def test_asyncio_by_name_is_asyncios_loop():
    assert kind_of("asyncio") == "asyncio"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="the uvloop extra is not installed")
def test_auto_takes_uvloop_when_it_is_installed_and_it_runs_a_coroutine():
    loop = new_event_loop("auto")
    try:
        assert loop_kind(loop) == "uvloop"
        assert loop.run_until_complete(asyncio.sleep(0, result=42)) == 42
    finally:
        loop.close()


def test_without_uvloop_auto_falls_back_and_asking_for_it_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    assert kind_of("auto") == "asyncio"
    with pytest.raises(EventLoopUnavailable, match=r"loopsim\[uvloop\]"):
        new_event_loop("uvloop")
