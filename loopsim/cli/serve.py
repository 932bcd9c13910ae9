"""``loopsim serve``: the long-running worker that steps every run queued with
``loopsim run start``."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from loopsim.cli.context import AppContext, app_context
from loopsim.errors import SpecError
from loopsim.service.eventloop import new_event_loop

if TYPE_CHECKING:
    from loopsim.record.db import Database

log = logging.getLogger("loopsim.service.worker")
PROCESSES_PER_CORE = 8


def _parse_http(value: str) -> tuple[str, int | None]:
    if value.lower() in ("", "off", "none"):
        return "127.0.0.1", None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SpecError(f"--http wants HOST:PORT or 'off', not {value!r}")
    return host or "127.0.0.1", int(port)


def _supervise(
    a: AppContext, n: int, worker_id: str | None, host: str, port: int | None, args: list[str]
) -> None:
    """Start ``n`` child workers and keep them until SIGTERM/SIGINT (service/processes.py)."""
    from loopsim.service.processes import Supervisor, child_command

    if port is not None and port and port + n - 1 > 65535:
        raise SpecError(f"--http port {port} leaves no room for {n} workers (PORT+{n - 1})")
    a.open_db()  # one clear line for a missing or outdated database, before any child
    a.close()
    base = worker_id or f"{socket.gethostname()}:{os.getpid()}"
    commands = []
    for i in range(1, n + 1):
        where = "off" if port is None else f"{host}:{port + i - 1 if port else 0}"
        name = f"{base}-{i}"
        commands.append(
            (name, child_command(["serve", "--worker-id", name, "--http", where, *args]))
        )
    # The children find the database the parent was given, --db included.
    env = {**os.environ, "LOOPSIM_DATABASE_URL": a.url}
    Supervisor(commands, env=env).run()


def serve(
    ctx: typer.Context,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Runs stepped at once.")
    ] = 4,
    worker_id: Annotated[
        str | None,
        typer.Option(
            "--worker-id",
            help="Name of this worker in leases and logs [default: HOST:PID]. Give a stable "
            "one to take back this worker's own runs at once after a restart.",
            show_default=False,
        ),
    ] = None,
    http: Annotated[
        str,
        typer.Option(
            help="Where to serve /metrics and /healthz, HOST:PORT (port 0 picks one), or off."
        ),
    ] = "127.0.0.1:9464",
    lease_seconds: Annotated[
        float, typer.Option(min=1.0, max=86_400.0, help="Lease length; renewed every third of it.")
    ] = 30.0,
    poll_seconds: Annotated[
        float, typer.Option(min=0.05, max=3600.0, help="How often to look for runs to claim.")
    ] = 1.0,
    grace_seconds: Annotated[
        float,
        typer.Option(min=0.0, max=86_400.0, help="On SIGTERM/SIGINT, how long days in flight get."),
    ] = 10.0,
    yield_after_days: Annotated[
        int,
        typer.Option(
            min=0,
            help="Days a run is stepped before it yields its slot at a day boundary to "
            "runs waiting for one (0: never).",
        ),
    ] = 2,
    log_format: Annotated[str, typer.Option(help="text or json (one object per line).")] = "text",
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            "-p",
            min=1,
            help="Worker processes to start on this database, each a full worker with "
            "--concurrency slots, worker id ID-1..ID-N and /metrics on PORT+i-1. The parent "
            "passes SIGTERM/SIGINT on and restarts a worker that dies.",
        ),
    ] = 1,
) -> None:
    """Step every run queued with `run start`, day by day, until SIGTERM or SIGINT.

    Claims runs through leases, so any number of `loopsim serve` processes may share one
    database. Runs beyond --concurrency take turns: a run stepped --yield-after-days days
    gives its slot up at a day boundary when others wait, and the one that waited longest
    is claimed next. Check-in decisions and `run pause|resume|halt` take effect at the next day
    boundary. On SIGTERM or SIGINT it stops claiming, gives days in flight --grace-seconds
    to commit, abandons the rest without a trace, releases its leases and exits 0.

    With --processes N it starts N such workers on the same database and supervises them:
    a signal is passed on to each once, and a worker that dies is started again after a
    backoff; the parent exits 1 if one keeps dying."""
    # The worker imports prometheus: only this command needs it.
    from loopsim.service.worker import (
        Service,
        ServiceConfig,
        configure_logging,
        default_worker_id,
    )

    a = app_context(ctx)
    if log_format not in ("text", "json"):
        raise SpecError(f"--log-format is text or json, not {log_format!r}")
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SpecError(f"--log-level is debug, info, warning or error, not {log_level!r}")
    host, port = _parse_http(http)
    cores = os.cpu_count() or 1
    if processes > PROCESSES_PER_CORE * cores:  # each loads the stack; thousands fill memory
        raise SpecError(
            f"--processes {processes}: at most {PROCESSES_PER_CORE} a core "
            f"({PROCESSES_PER_CORE * cores} on this machine's {cores}); each worker "
            "already steps --concurrency runs at once"
        )
    worker_id = worker_id or (None if processes > 1 else default_worker_id())
    # The supervisor names each child on its own lines; a worker names itself on all of its.
    configure_logging(log_format, log_level, worker=None if processes > 1 else worker_id)
    if processes > 1:
        args = [
            "--concurrency", str(concurrency),
            "--lease-seconds", str(lease_seconds),
            "--poll-seconds", str(poll_seconds),
            "--grace-seconds", str(grace_seconds),
            "--yield-after-days", str(yield_after_days),
            "--log-format", log_format,
            "--log-level", log_level,
        ]  # fmt: skip
        _supervise(a, processes, worker_id, host, port, args)
        return
    assert worker_id is not None
    config = ServiceConfig(
        worker_id=worker_id,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        poll_seconds=poll_seconds,
        grace_seconds=grace_seconds,
        yield_after_days=yield_after_days,
        http_host=host,
        http_port=port,
    )
    # The chat seam and the embedder are built at the first day planned, not before the
    # first claim: they import langchain.
    service = Service(a.open_db(), a.settings, a.chats(), config, similarity_from=a.similarity)
    _say_what_others_hold(service.db, config.worker_id)
    # Not asyncio.run: it would wait for every executor thread, and a call into the
    # embedded model on a thread cannot be interrupted. Its day is already abandoned and
    # its lease released, so the process exits without waiting for it.
    loop = new_event_loop(a.settings.event_loop)
    try:
        loop.run_until_complete(service.serve())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()  # shuts the default executor down without waiting
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()[1:]):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _say_what_others_hold(db: Database, worker_id: str) -> None:
    """One line per other worker holding live leases: after a crash, a worker restarted
    under a new id waits for them to end, and should say why it is idle."""
    from loopsim.record.leases import held_elsewhere

    for owner, runs, until in held_elsewhere(db, worker_id):
        log.info(
            "%d run(s) leased to worker %s until %s UTC: claimable when that lease ends "
            "(a worker restarted with its own --worker-id takes its runs back at once)",
            runs,
            owner,
            until.strftime("%H:%M:%S"),
            extra={"event": "lease.waiting", "owner": owner, "runs": runs},
        )
