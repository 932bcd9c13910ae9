"""``loopsim serve --processes N``: one parent that starts N full workers and keeps them.

One worker is one asyncio event loop, and under load it is bound to one core (model
replies are parsed and days committed while holding the GIL). To use a machine's cores,
the parent starts N child ``loopsim serve`` processes on the same database, each with a
worker id of its own (``ID-1`` .. ``ID-N``) and, when HTTP is on, its own ``/metrics``
and ``/healthz`` on ``PORT + i - 1``. The children share runs through leases exactly as
workers on different machines do; the parent never touches the database.

What the parent promises:

- **Stopping.** SIGTERM or SIGINT to the parent is passed on, once, as SIGTERM to every
  child: each stops claiming, gives its days in flight ``--grace-seconds``, abandons the
  rest unwritten and releases its leases, as a lone worker does. A second signal is
  passed on too, and skips the grace period. The parent exits 0 when all have stopped.
  The children run in a session of their own, so a terminal's Ctrl-C reaches only the
  parent and is passed on once (SIGINT to the whole group would count as a second signal
  in each child); on Linux a child also gets SIGTERM if the parent dies.
- **Restarting.** A child that exits while the parent is not stopping is logged
  (``serve.child.exit``) and started again from the same slot, with the same worker id,
  so it takes its own runs back at once, after a backoff that doubles from
  ``restart_initial_seconds`` up to ``restart_max_seconds`` for each death in a row. A
  child that stayed up ``stable_seconds`` starts the count afresh.
- **Giving up.** A slot whose child died ``max_restarts`` times in a row without staying
  up makes the parent stop every child and exit non-zero (:class:`ChildrenKeepDying`).

It imports only the standard library and loopsim's errors, so it adds nothing to the
start-up of ``loopsim serve``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from loopsim.errors import LoopsimError

log = logging.getLogger("loopsim.service.processes")

# Linux's prctl(PR_SET_PDEATHSIG, ...): the kernel signals the child when the parent dies.
_PR_SET_PDEATHSIG = 1


class ChildrenKeepDying(LoopsimError):
    """A worker process kept dying right after it was started; the parent stopped the
    others and gave up."""


@dataclass
class ProcessPolicy:
    """How the parent restarts children and when it gives up."""

    restart_initial_seconds: float = 1.0
    restart_max_seconds: float = 30.0
    stable_seconds: float = 60.0  # up this long: the next death starts the count afresh
    max_restarts: int = 5  # deaths in a row of one slot before the parent gives up
    poll_seconds: float = 0.2


@dataclass
class _Slot:
    index: int
    name: str
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths: int = 0  # in a row, without staying up stable_seconds
    restart_at: float | None = None
    starts: int = 0
    history: list[int] = field(default_factory=list)  # exit codes, newest last


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def ended(code: int) -> str:
    """How a child's exit reads: Popen's -9 is "was killed by SIGKILL", not a code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def child_command(argv: Sequence[str]) -> list[str]:
    """The command that runs one child: this interpreter, ``-m loopsim``, then ``argv``."""
    return [sys.executable, "-m", "loopsim", *argv]


class Supervisor:
    """Starts one child per command, passes signals on, restarts the dead."""

    def __init__(
        self,
        commands: Sequence[tuple[str, Sequence[str]]],
        policy: ProcessPolicy | None = None,
        *,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = [_Slot(i + 1, name, list(cmd)) for i, (name, cmd) in enumerate(commands)]
        self.policy = policy or ProcessPolicy()
        self.env = env
        self.clock = clock
        self.stops = 0  # signals received
        self._told: dict[int, int] = {}  # pid: SIGTERMs sent to it

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stops += 1
        log.info(
            "%s: passing it on to %d workers%s",
            signal.Signals(signum).name,
            sum(s.proc is not None and s.proc.poll() is None for s in self.slots),
            "" if self.stops == 1 else " (again: days in flight are abandoned)",
            extra={"event": "stop"},
        )
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is None:
                self._told[slot.proc.pid] = self._told.get(slot.proc.pid, 0) + 1
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)

    # -------------------------------------------------------------------- slots

    def _start(self, slot: _Slot) -> None:
        slot.proc = subprocess.Popen(
            slot.command,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        slot.started = self.clock()
        slot.restart_at = None
        slot.starts += 1
        if self.stops and not self._told.get(slot.proc.pid):
            # A stop signal landed while it was being started: it was not passed on.
            self._told[slot.proc.pid] = 1
            slot.proc.send_signal(signal.SIGTERM)
        log.info(
            "worker %s started (pid %d)",
            slot.name,
            slot.proc.pid,
            extra={"event": "serve.child.start", "worker": slot.name},
        )

    def _exited(self, slot: _Slot, code: int) -> None:
        """A child exited while nobody asked it to: schedule its restart, or give up."""
        now = self.clock()
        up = now - slot.started
        slot.history.append(code)
        slot.deaths = 1 if up >= self.policy.stable_seconds else slot.deaths + 1
        slot.proc = None
        if slot.deaths > self.policy.max_restarts:
            raise ChildrenKeepDying(
                f"worker {slot.name} died {slot.deaths} times in a row (the last "
                f"time it {ended(code)}); stopped the others. Its log above says why."
            )
        wait = min(
            self.policy.restart_max_seconds,
            self.policy.restart_initial_seconds * 2 ** (slot.deaths - 1),
        )
        slot.restart_at = now + wait
        log.warning(
            "worker %s %s after %.1f s; restarting it in %.1f s",
            slot.name,
            ended(code),
            up,
            wait,
            extra={"event": "serve.child.exit", "worker": slot.name, "error": code},
        )

    # --------------------------------------------------------------------- run

    def run(self) -> int:
        """Supervise until a stop signal and every child has exited. Returns the exit
        code for the parent: 0, or raises :class:`ChildrenKeepDying`."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in self.slots:
                if self.stops:  # a signal while starting them: start no more
                    break
                self._start(slot)
            try:
                self._watch()
            except ChildrenKeepDying:
                self.stops = max(self.stops, 1)
                self._signal_all(signal.SIGTERM)
                self._reap_all()
                raise
            self._reap_all()
            log.info("all workers stopped", extra={"event": "serve.stop"})
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self) -> None:
        while not self.stops:
            for slot in self.slots:
                if slot.proc is not None:
                    code = slot.proc.poll()
                    if code is not None and not self.stops:
                        self._exited(slot, code)
                elif slot.restart_at is not None and self.clock() >= slot.restart_at:
                    self._start(slot)
            time.sleep(self.policy.poll_seconds)

    def _reap_all(self) -> None:
        """Wait for every child; a signal arriving meanwhile is passed on by the handler."""
        for slot in self.slots:
            if slot.proc is not None:
                code = slot.proc.wait()
                if code != 0:
                    log.warning(
                        "worker %s %s while stopping",
                        slot.name,
                        ended(code),
                        extra={"event": "serve.child.exit", "worker": slot.name, "error": code},
                    )
