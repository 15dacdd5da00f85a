"""A pre-fork supervisor: N worker processes on one port, restarted when they die.

Used by ``hive-boundary gateway`` (``[gateway] workers``). The supervisor
binds one listening socket per worker itself, all with ``SO_REUSEPORT`` on the
same address, before any worker starts: a port already taken is one clear
error, not a crash loop; the kernel spreads new connections over the sockets;
and a restarted worker gets its predecessor's socket back, so connections
queued on it while it was down are served, not reset. (Linux lets only
sockets of the same effective uid share a port this way.)

The supervisor has no event loop and serves nothing. It blocks SIGTERM,
SIGINT and SIGCHLD and takes them with ``sigtimedwait``, so no signal
interrupts it half-way through starting or reaping a worker:

- a worker that exits while the supervisor is not stopping is reaped and
  started again on the same socket (after a back-off that grows while
  workers die within :data:`QUICK_DEATH` seconds of starting; after
  :data:`MAX_QUICK_DEATHS` such deaths in a row it gives up, stops the others
  and exits 1: a worker that cannot start will not start by retrying);
- SIGTERM or SIGINT is forwarded to every worker (SIGTERM), which finishes
  its requests and exits; the supervisor waits for each by PID (SIGKILL after
  ``stop_timeout``) and exits 0.

Workers are forked (they inherit the loaded code, not a running loop), get
``PR_SET_PDEATHSIG`` = SIGTERM, so a supervisor killed outright takes its
workers with it, and leave through ``os._exit``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from enforcer.log import get_logger

__all__ = ["MAX_QUICK_DEATHS", "QUICK_DEATH", "bind_listeners", "supervise"]


def _log() -> Any:
    # Bound when used, not at import: the daemon configures logging after importing us.
    return get_logger("enforcer.supervisor")


QUICK_DEATH = 2.0
"""A worker that dies within this many seconds of starting counts as a quick death."""
MAX_QUICK_DEATHS = 8
"""Quick deaths in a row (any worker) after which the supervisor gives up."""
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1


def bind_listeners(host: str, port: int, count: int, *, backlog: int = 1024) -> list[socket.socket]:
    """``count`` listening TCP sockets on ``host:port``, sharing it with ``SO_REUSEPORT``.

    ``port`` 0 picks a free port for the first and binds the rest to the same one.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.set_inheritable(False)
            address = sock.getsockname()  # port 0: the others join the port it got
        return sockets
    except OSError:
        for sock in sockets:
            sock.close()
        raise


@dataclass
class _Worker:
    index: int
    pid: int = 0
    started: float = 0.0
    restart_at: float | None = None


def _set_parent_death_signal(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's stop still ends it
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(0)


def _fork(worker: _Worker, serve: Callable[[int], int], listeners: Sequence[socket.socket]) -> None:
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            _set_parent_death_signal(parent)
            for i, sock in enumerate(listeners):
                if i != worker.index:
                    sock.close()
            code = serve(worker.index)
        except BaseException:  # a worker never returns into the supervisor
            with contextlib.suppress(Exception):
                _log().exception("supervisor.worker.crashed", index=worker.index)
        finally:
            os._exit(code)
    worker.pid = pid
    worker.started = time.monotonic()
    worker.restart_at = None
    _log().info("supervisor.worker.started", index=worker.index, pid=pid)


def _reap(workers: dict[int, _Worker]) -> list[tuple[_Worker, int]]:
    """Workers that exited since the last call, with their wait status."""
    dead: list[tuple[_Worker, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return dead
        if pid == 0:
            return dead
        worker = workers.pop(pid, None)
        if worker is not None:
            worker.pid = 0
            dead.append((worker, status))


def _stop(workers: dict[int, _Worker], timeout: float) -> None:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while workers and time.monotonic() < deadline:
        _reap(workers)
        if workers:
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    for pid in list(workers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        workers.pop(pid, None)


def supervise(
    listeners: Sequence[socket.socket],
    serve: Callable[[int], int],
    *,
    stop_timeout: float = 10.0,
    on_started: Callable[[list[int]], None] | None = None,
) -> int:
    """Run ``serve(i)`` in a worker process per listener ``i`` until SIGTERM/SIGINT.

    ``serve`` runs in the forked worker and returns its exit code.
    ``on_started`` is told the PIDs whenever the set of workers changes.
    Returns 0 after a requested stop, 1 when workers keep dying at start.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    workers: dict[int, _Worker] = {}
    pending = [_Worker(i) for i in range(len(listeners))]
    quick_deaths = 0
    code = 0
    try:
        while True:
            now = time.monotonic()
            started = False
            for worker in [w for w in pending if (w.restart_at or 0.0) <= now]:
                pending.remove(worker)
                _fork(worker, serve, listeners)
                workers[worker.pid] = worker
                started = True
            if started and on_started is not None:
                on_started(sorted(workers))
            info = signal.sigtimedwait(_SIGNALS, 0.25)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                _log().info("supervisor.stopping", signal=signal.Signals(info.si_signo).name)
                break
            for worker, status in _reap(workers):
                lived = time.monotonic() - worker.started
                quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH else 0
                _log().warning(
                    "supervisor.worker.died",
                    index=worker.index,
                    status=_describe(status),
                    lived_s=round(lived, 3),
                )
                if quick_deaths >= MAX_QUICK_DEATHS:
                    _log().error("supervisor.giving_up", quick_deaths=quick_deaths)
                    code = 1
                    break
                worker.restart_at = time.monotonic() + min(10.0, 0.1 * 2**quick_deaths)
                pending.append(worker)
            if code:
                break
    finally:
        _stop(workers, stop_timeout)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return code


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"
