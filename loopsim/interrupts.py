"""Ctrl-C where Python cannot take it: inside a function C calls back, such as the
embedded model's grammar sampler (:mod:`loopsim.chat.sampling`).

ctypes swallows an exception raised in a callback, and the callback's work for that
token is lost: llama.cpp then samples a token its grammar does not allow and aborts the
process (SIGABRT, a C++ "terminate called"), or the Ctrl-C is simply gone. Callbacks
register their code here; loopsim's SIGINT handlers call :func:`interrupt`, which,
inside one, has the signal sent again a moment later, to land in ordinary Python code.
Nothing is imported here but modules built into the interpreter: the ``loopsim``
command's own handler (``loopsim.__main__``) uses it.
"""

from __future__ import annotations

import _signal
import _thread
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # ``types`` is no module built into the interpreter
    from types import CodeType, FrameType

NATIVE_CALLBACKS: set[CodeType] = set()
_FIRST_IMPORTER = _thread.get_ident()  # the command's main thread (loopsim.__main__)


def in_native_callback(frame: FrameType | None) -> bool:
    """Whether ``frame`` (a signal handler's) runs inside a registered callback."""
    while frame is not None:
        if frame.f_code in NATIVE_CALLBACKS:
            return True
        frame = frame.f_back
    return False


def _send(main: int) -> None:
    time.sleep(0.05)  # the callback has returned to C, and C to Python, by now (most often)
    # To the main thread itself: it may be blocked in a system call otherwise.
    _signal.pthread_kill(main, _signal.SIGINT)


def again_soon() -> None:
    """Send SIGINT to the main thread again in a moment, from a thread of its own."""
    _thread.start_new_thread(_send, (_main_ident(),))


def interrupt(frame: FrameType | None) -> None:
    """What a SIGINT handler does to stop the command: raise KeyboardInterrupt where the
    signal landed, or, inside a registered callback, have it sent again to land after."""
    if in_native_callback(frame):
        again_soon()
        return
    raise KeyboardInterrupt


def on_sigint(signum: int, frame: FrameType | None) -> None:
    """A SIGINT handler: Python's own, but for a Ctrl-C inside a registered callback,
    which is sent again to land after it. The ``loopsim`` command installs it for its
    whole life (``loopsim.__main__``), the Python API's ``step`` while it runs."""
    interrupt(frame)


class deferred:  # a context manager, named as one
    """While inside, a Ctrl-C that lands in a registered callback is sent again, as the
    ``loopsim`` command does for its whole life: for the Python API, whose caller may
    have a SIGINT handler of its own, which is then left alone. Only Python's default
    handler, on the main thread, is swapped, and it is put back on the way out."""

    def __enter__(self) -> None:
        self.swapped = False
        if _thread.get_ident() != _main_ident():
            return
        if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
            _signal.signal(_signal.SIGINT, on_sigint)
            self.swapped = True

    def __exit__(self, *_: object) -> None:
        if self.swapped and _signal.getsignal(_signal.SIGINT) is on_sigint:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)


def _main_ident() -> int:
    threading = sys.modules.get("threading")  # imported by then, unless very early
    return threading.main_thread().ident if threading is not None else _FIRST_IMPORTER
