"""Agent lifecycle behind one interface: create, start, stop, restart, destroy, status.

:class:`LifecycleBackend` is what the operator API calls. Until hive-priv's
container backend is wired in, :class:`LocalProcessBackend` really starts and
stops one local process per agent (its registered ``command``), as the agent's
uid when the core runs as root, with ``HIVE_SOCKET`` pointing at its socket and
its output appended to ``STATE/agents/<name>/harness/output.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Protocol

from enforcer.config import HiveConfig
from enforcer.errors import Conflict, Unavailable
from enforcer.store import AgentRecord

__all__ = ["LifecycleBackend", "LocalProcessBackend"]


class LifecycleBackend(Protocol):
    """Container/process lifecycle of agents (hive-priv implements it in production)."""

    async def create(self, agent: AgentRecord) -> None:
        """Prepare everything the agent needs (directories, ...); idempotent."""
        ...

    async def allocate_uid(self, name: str, command: tuple[str, ...]) -> int | None:
        """Choose the uid of a new agent ``name`` (making what needs it), or None.

        None: this backend does not choose uids; registration must name one.
        A backend that does (hive-priv's, from a range it never hands out
        twice) creates the container here; :meth:`destroy` undoes it.
        """
        ...

    async def start(self, agent: AgentRecord) -> None:
        """Start the agent; :class:`Conflict` if it is already running."""
        ...

    async def stop(self, agent: AgentRecord) -> None:
        """Stop the agent (no-op if it is not running)."""
        ...

    async def restart(self, agent: AgentRecord) -> None:
        """Stop, then start."""
        ...

    async def destroy(self, agent: AgentRecord) -> None:
        """Stop and remove everything the agent made."""
        ...

    def status(self, name: str) -> str:
        """``running``, ``stopped``, ``failed`` (died while it should run) or ``absent``.

        A backend that cannot tell right now (its helper does not answer) says
        ``unknown`` rather than repeat what may no longer hold.
        """
        ...

    async def close(self) -> None:
        """Stop everything this backend started."""
        ...


class LocalProcessBackend:
    """One local child process per agent."""

    def __init__(self, config: HiveConfig, *, stop_timeout: float = 5.0) -> None:
        self._config = config
        self._stop_timeout = stop_timeout
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._known: set[str] = set()

    def _dirs(self, name: str) -> tuple[Path, Path]:
        base = self._config.agent_dir(name)
        return base / "state", base / "harness"

    async def allocate_uid(self, name: str, command: tuple[str, ...]) -> int | None:
        """None: a local agent runs under the uid registration names."""
        return None

    async def create(self, agent: AgentRecord) -> None:
        """Make ``state/`` (the agent's, 0700) and ``harness/`` (never agent-visible)."""
        state, harness = self._dirs(agent.name)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        harness.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0:
            os.chown(state, agent.uid, agent.uid)
        self._known.add(agent.name)

    async def start(self, agent: AgentRecord) -> None:
        """Spawn the agent's command."""
        proc = self._procs.get(agent.name)
        if proc is not None and proc.returncode is None:
            raise Conflict(f"agent {agent.name!r} is already running")
        if not agent.command:
            raise Conflict(f"agent {agent.name!r} has no command to run")
        await self.create(agent)
        state, harness = self._dirs(agent.name)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HIVE_AGENT": agent.name,
            "HIVE_SOCKET": str(self._config.agent_socket(agent.name)),
            "HOME": str(state),
        }
        as_other = os.geteuid() == 0 and agent.uid != 0
        out = os.open(harness / "output.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            self._procs[agent.name] = await asyncio.create_subprocess_exec(
                *agent.command,
                cwd=state,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                user=agent.uid if as_other else None,
                group=agent.uid if as_other else None,
                extra_groups=[] if as_other else None,
                start_new_session=True,
            )
        except OSError as e:
            raise Unavailable(f"cannot start agent {agent.name!r}: {e.strerror}") from e
        finally:
            os.close(out)

    async def stop(self, agent: AgentRecord) -> None:
        """SIGTERM the agent's process group; SIGKILL after the timeout."""
        proc = self._procs.pop(agent.name, None)
        if proc is not None:
            await self._terminate(proc)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM ``proc``'s process group, SIGKILL after the timeout; reap it."""
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def restart(self, agent: AgentRecord) -> None:
        """Stop, then start."""
        await self.stop(agent)
        await self.start(agent)

    async def destroy(self, agent: AgentRecord) -> None:
        """Stop and remove the agent's directory."""
        await self.stop(agent)
        shutil.rmtree(self._config.agent_dir(agent.name), ignore_errors=True)
        self._known.discard(agent.name)

    def status(self, name: str) -> str:
        """``running`` if its process is alive; ``failed`` if it died on its own.

        A process the operator stopped is forgotten by :meth:`stop`, so only an
        exit nobody asked for is still here: a non-zero status or a signal
        (negative return code) is ``failed``, a clean exit 0 ``stopped``.
        ``absent`` for an agent this backend does not know.
        """
        proc = self._procs.get(name)
        if proc is not None:
            if proc.returncode is None:
                return "running"
            if proc.returncode != 0:
                return "failed"
        return "stopped" if name in self._known else "absent"

    async def close(self) -> None:
        """Stop every process this backend started."""
        for name in list(self._procs):
            await self._terminate(self._procs.pop(name))
