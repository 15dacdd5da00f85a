"""The core runs unprivileged: even with its own checks switched off, the kernel says no.

The "core" here is a process running as a unique unprivileged user with the
core's group, exactly as ``hive-core.service`` runs it. It deliberately
bypasses every allow-list (plain ``open()``, no confinement, no policy) and
still cannot read ``/etc/shadow`` or any agent's ``harness/`` files, while
what the design grants it (agents' ``state/`` through its group) works.
"""

from __future__ import annotations

import asyncio
import json

from enforcer.priv_client import PrivClient
from tests.priv.conftest import SYSTEM_PYTHON, PrivEnv, run_as

# No allow-list, no confinement, no policy: just try to open every path.
READ_ANYTHING = r"""
import json, sys
out = {}
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as f:
            out[path] = "READ:" + f.read(64).decode(errors="replace")
    except OSError as e:
        out[path] = type(e).__name__
print(json.dumps(out))
"""


def test_core_user_cannot_read_shadow_or_harness_even_without_allow_list(priv: PrivEnv) -> None:
    a, b = priv.agent_name(), priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)
    for name in (a, b):
        asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "pass"]))
        agent_dir = priv.state_dir / "agents" / name
        (agent_dir / "harness" / "secret.txt").write_text(f"harness secret of {name}")
        (agent_dir / "state" / "visible.txt").write_text(f"state of {name}")
        (agent_dir / "state" / "visible.txt").chmod(0o640)
    targets = [
        "/etc/shadow",
        f"{priv.state_dir}/agents/{a}/harness/secret.txt",
        f"{priv.state_dir}/agents/{b}/harness/secret.txt",
        f"{priv.state_dir}/agents/{b}/harness/agent.log",
        f"{priv.state_dir}/priv/containers.json",
        f"{priv.state_dir}/agents/{a}/state/visible.txt",
    ]
    out = run_as(priv.core, READ_ANYTHING, *targets)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["/etc/shadow"] == "PermissionError"
    for path in targets[1:4]:
        assert got[path] in {"PermissionError", "FileNotFoundError"}, (path, got[path])
        assert not got[path].startswith("READ:")
    assert got[targets[1]] == "PermissionError"  # it exists: the kernel refused
    assert got[targets[4]] == "PermissionError"
    # What the design grants it still works: the agent's state/ through the group.
    assert got[targets[5]] == f"READ:state of {a}"
    for name in (a, b):
        asyncio.run(client.container_destroy(name))


def test_an_agent_user_cannot_read_another_agents_state_or_harness(priv: PrivEnv) -> None:
    a, b = priv.agent_name(), priv.agent_name()
    client = PrivClient(priv.socket, timeout=60)
    for name in (a, b):
        asyncio.run(client.container_create(name, [SYSTEM_PYTHON, "-c", "pass"]))
        (priv.state_dir / "agents" / name / "state" / "mine.txt").write_text(name)
        (priv.state_dir / "agents" / name / "harness" / "h.txt").write_text(name)
    from enforcer.users import lookup_user

    agent_a = lookup_user(f"hive-a-{a}")
    assert agent_a is not None
    out = run_as(
        agent_a,
        READ_ANYTHING,
        f"{priv.state_dir}/agents/{b}/state/mine.txt",
        f"{priv.state_dir}/agents/{b}/harness/h.txt",
        f"{priv.state_dir}/agents/{a}/harness/h.txt",
        "/etc/shadow",
    )
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout).values()) == {"PermissionError"}
    for name in (a, b):
        asyncio.run(client.container_destroy(name))
