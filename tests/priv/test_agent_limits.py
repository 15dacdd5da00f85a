"""Each agent's memory, CPU time and tasks are bounded by a control group of its own.

Real agents under a real hive-priv (``[agents]`` limits in its hive.toml): an
agent that takes more memory than its limit is killed - it alone, hive-priv
serves on; one that forks without end gets no more tasks than its limit; one
that spins gets no more than its share of CPU time; and its group is gone
with it when it is destroyed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enforcer.priv_client import PrivClient
from tests.conftest import wait_until
from tests.priv.conftest import (
    AGENT_REPORT,
    SYSTEM_PYTHON,
    PrivEnv,
    cgroup_layout,
    priv_env_under,
    read_report,
    running_agent,
)

GREEDY = (
    AGENT_REPORT
    + r"""
import os, sys, time
send_report({"started": True})
time.sleep(0.3)
chunks = []
for _ in range(64):  # 256 MiB, every page touched
    chunks.append(bytearray(4 << 20))
    for i in range(0, len(chunks[-1]), 4096):
        chunks[-1][i] = 1
os.write(1, b"took 256 MiB\n")
time.sleep(600)
"""
)

FORKER = (
    AGENT_REPORT
    + r"""
import os, time
made, errors = 0, []
for _ in range(100):
    try:
        pid = os.fork()
    except OSError as e:
        errors.append(e.errno)
        break
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    made += 1
send_report({"made": made, "errors": errors})
time.sleep(600)
"""
)

SPINNER = (
    AGENT_REPORT
    + r"""
import time
start = time.monotonic()
while time.monotonic() - start < 1.5:
    pass
send_report({"cpu": time.process_time(), "wall": time.monotonic() - start})
time.sleep(600)
"""
)


@pytest.fixture
def limited() -> Iterator[PrivEnv]:
    """hive-priv with small limits: 64 MiB, 0.1 CPU, 24 tasks per agent."""
    with priv_env_under("/run") as env:
        env.config = "[agents]\nmemory_max_bytes = 67108864\ncpu_max = 0.1\ntasks_max = 24\n"
        env.start()
        yield env


def _status(client: PrivClient, name: str) -> dict[str, Any]:
    return asyncio.run(client.container_status())[name]


def _group(env: PrivEnv, name: str, controller: str) -> Path:
    return cgroup_layout(env.cgroup_parent).agent_dirs(name)[controller]


def test_an_agent_past_its_memory_limit_is_killed_and_hive_priv_serves_on(
    limited: PrivEnv,
) -> None:
    client = PrivClient(limited.socket, timeout=60)
    with running_agent(limited, GREEDY) as name:
        assert read_report(limited, name) == {"started": True}
        # Its first process was born in its group (never moved in after it could fork).
        procs = _group(limited, name, "memory") / "cgroup.procs"
        status = _status(client, name)
        assert status["pid"] is not None

        def ended() -> bool:
            return bool(_status(client, name)["state"] != "running")

        wait_until("the agent killed at its limit", ended, timeout=30)
        status = _status(client, name)
        assert status["state"] == "failed"
        assert status["exit_code"] == -9  # SIGKILL: the kernel's OOM killer, in its group
        # The operator is told why (the core's agent page shows it).
        assert status["resources"]["oom_kills"] >= 1
        assert status["resources"]["memory_max_bytes"] == 64 << 20
        log = limited.state_dir / "agents" / name / "harness" / "agent.log"
        assert b"took 256 MiB" not in log.read_bytes()
        assert procs.read_text().split() == []
    # hive-priv itself was not the one killed, and still makes containers.
    assert limited.proc is not None
    assert limited.proc.poll() is None
    still = AGENT_REPORT + "send_report({'ok': 1})\nimport time; time.sleep(60)"
    with running_agent(limited, still) as n:
        assert read_report(limited, n) == {"ok": 1}


def test_an_agent_forking_without_end_gets_no_more_tasks_than_its_limit(
    limited: PrivEnv,
) -> None:
    with running_agent(limited, FORKER) as name:
        seen = read_report(limited, name)
        # 24 tasks: the agent itself and 23 children; the 24th fork is refused (EAGAIN).
        assert seen["made"] == 23, seen
        assert seen["errors"] == [11]
        assert (_group(limited, name, "pids") / "pids.current").read_text().strip() == "24"


def test_a_spinning_agent_gets_no_more_than_its_share_of_cpu(limited: PrivEnv) -> None:
    with running_agent(limited, SPINNER) as name:
        seen = read_report(limited, name)
        # 0.1 CPU: 10 ms per 100 ms period. 1.5 s of wall clock spinning would be
        # 1.5 s of CPU unbounded; bounded it is about 0.15 s (a period of slack).
        assert seen["wall"] >= 1.5
        assert seen["cpu"] < 0.4, seen
        stat = (_group(limited, name, "cpu") / "cpu.stat").read_text()
        throttled = dict(line.split() for line in stat.splitlines())
        assert int(throttled["nr_throttled"]) > 0


def test_a_destroyed_agents_group_is_gone_and_a_restart_keeps_the_limits(
    limited: PrivEnv,
) -> None:
    client = PrivClient(limited.socket, timeout=60)
    with running_agent(limited, "import time; time.sleep(600)") as name:
        memory = _group(limited, name, "memory")
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)
        asyncio.run(client.container_restart(name))
        pid = _status(client, name)["pid"]
        wait_until(
            "the new process in its group",
            lambda: str(pid) in (memory / "cgroup.procs").read_text().split(),
        )
        # hive-priv itself went back to its own group after each spawn.
        assert (
            str(limited.proc.pid if limited.proc else 0)
            not in (memory / "cgroup.procs").read_text().split()
        )
    deadline = time.monotonic() + 5
    while memory.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not memory.exists()
    assert not _group(limited, name, "pids").exists()


SEER = (
    AGENT_REPORT
    + r"""
import os, time
with open("/proc/self/cgroup") as f:
    paths = [line.rstrip("\n").split(":", 2)[2] for line in f]
send_report({"sys_fs_cgroup": os.listdir("/sys/fs/cgroup"), "paths": paths})
time.sleep(600)
"""
)


def test_an_agent_sees_no_group_but_its_own_and_no_pid_through_the_cgroup_files(
    limited: PrivEnv,
) -> None:
    # Found by review: /sys/fs/cgroup (the host's sysfs) listed every host pid
    # in world-readable cgroup.procs files, past the agent's hidepid /proc.
    with running_agent(limited, SEER) as name:
        seen = read_report(limited, name)
        assert seen["sys_fs_cgroup"] == []
        # Its own cgroup namespace: its group is its root.
        assert set(seen["paths"]) == {"/"}, seen["paths"]


def test_an_agent_named_like_a_control_file_starts_and_goes(limited: PrivEnv) -> None:
    # Found by review: "tasks" is a valid agent name and a v1 control file in
    # every group; its group could not be made, nor the container destroyed.
    client = PrivClient(limited.socket, timeout=60)
    name = "tasks"
    limited.agents.append(name)
    asyncio.run(
        client.container_create(name, [SYSTEM_PYTHON, "-c", "import time; time.sleep(600)"])
    )
    try:
        asyncio.run(client.container_start(name))
        assert _status(client, name)["state"] == "running"
        assert _group(limited, name, "pids").is_dir()
    finally:
        asyncio.run(client.container_destroy(name))
    assert name not in asyncio.run(client.container_status())
    assert not _group(limited, name, "pids").exists()


def test_hive_privs_own_threads_never_count_against_an_agents_tasks(
    priv_env: PrivEnv,
) -> None:
    # Found by review: hive-priv moved its whole process (every thread) into
    # the agent's group for the spawn; with a small tasks_max the start failed.
    priv_env.config = "[agents]\ntasks_max = 16\n"
    priv_env.start()
    # hive-priv serves each connection in a thread of its own: 24 idle ones
    # give it more threads than the agent may have tasks.
    asyncio.run(PrivClient(priv_env.socket, timeout=60).container_status())  # activated
    idle = [socket.socket(socket.AF_UNIX) for _ in range(24)]
    try:
        for conn in idle:
            conn.connect(str(priv_env.socket))
        assert priv_env.proc is not None
        pid = priv_env.proc.pid
        wait_until("hive-priv's threads", lambda: len(os.listdir(f"/proc/{pid}/task")) > 24)
        _many_threads_then_forker(priv_env)
    finally:
        for conn in idle:
            conn.close()


def _many_threads_then_forker(priv_env: PrivEnv) -> None:
    with running_agent(priv_env, FORKER) as name:
        seen = read_report(priv_env, name)
        assert seen["made"] == 15, seen
        assert priv_env.proc is not None
        tasks = (_group(priv_env, name, "pids") / "tasks").read_text().split()
        threads = os.listdir(f"/proc/{priv_env.proc.pid}/task")
        assert not set(tasks) & set(threads)
