"""`make demo` end to end: the demo's own start-up path, then the operator and an agent.

The stack is started by :class:`enforcer.demo.Demo` itself (the code `make demo`
runs), with temporary directories and unique names: the nftables table, the
namespace and veth prefixes, the agents and the service users. The tests then
drive it as its two principals would - the operator through the gateway
(session, CSRF, Origin), an agent through its own socket as its own uid - run
`hive-boundary audit --live --probe`, simulate a crash and a second run, and
finally check that stopping leaves nothing behind.

The tests of this module share one running stack and run in file order.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from enforcer.config import default_policy_dir
from enforcer.containers import processes_of_uid
from enforcer.demo import SAMPLE_AGENT, Demo, DemoOptions
from enforcer.users import AGENT_IDS, agent_user_name, lookup_user, remove_system_user
from netns.apply import Nft
from netns.links import list_namespaces
from tests.conftest import require_root

pytestmark = pytest.mark.timeout(240)


def _sample_agent() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_agent", SAMPLE_AGENT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _policy_copy(base: Path) -> Path:
    """The shipped policy with subnets no concurrent test uses."""
    policy = base / "policies"
    shutil.copytree(default_policy_dir(), policy, ignore=shutil.ignore_patterns("__*"))
    v4 = ipaddress.IPv4Network(
        (int(ipaddress.IPv4Address("10.0.0.0")) + (secrets.randbelow(0xFFFF) << 8), 24)
    )
    v6 = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64"
    text = (policy / "network.toml").read_text()
    text = text.replace('ipv4 = "10.203.0.0/16"', f'ipv4 = "{v4}"')
    text = text.replace('ipv6 = "fd00:4869:7665::/48"', f'ipv6 = "{v6}"')
    (policy / "network.toml").write_text(text)
    return policy


@dataclass
class Stack:
    """The running demo and what the final check needs."""

    demo: Demo
    opts: DemoOptions
    pids: list[int] = field(default_factory=list)

    def agent(self, role: str) -> str:
        """The agent name playing ``role``."""
        return next(name for name, r in self.opts.agents if r == role)

    def remember_pids(self) -> None:
        """The daemons' PIDs, to check later that none survives."""
        self.pids += [p.pid for p in self.demo.procs.values()]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The demo, started through its own start-up path with unique names."""
    require_root()
    token = secrets.token_hex(2)
    base = Path(tempfile.mkdtemp(prefix="hbd-", dir="/tmp"))
    os.chmod(base, 0o755)  # agents (their own uids) traverse to their sockets
    opts = DemoOptions(
        run_dir=base / "run",
        state_dir=base / "state",
        policy_dir=_policy_copy(base),
        port=_free_port(),
        table=f"hbd{token}",
        netns_prefix=f"hbd{token}-",
        ifprefix=f"hd{token}",
        cgroup_parent=f"hbd{token}",
        agents=((f"d{token}q", "asker"), (f"d{token}p", "approver"), (f"d{token}w", "worker")),
        core_user=f"hbdc{token}",
        gateway_user=f"hbdg{token}",
    )
    demo = Demo(opts, say=lambda line: None)
    holder = Stack(demo, opts)
    try:
        demo.start()
        holder.remember_pids()
        yield holder
    finally:
        holder.demo.stop()
        for name, _ in opts.agents:
            remove_system_user(agent_user_name(name))
        remove_system_user(opts.core_user)
        remove_system_user(opts.gateway_user)
        shutil.rmtree(base, ignore_errors=True)


def test_the_operator_answers_and_approves_through_the_gateway(stack: Stack) -> None:
    demo, op = stack.demo, stack.demo._op()
    asker, approver = stack.agent("asker"), stack.agent("approver")
    question = demo.wait_open("questions", asker)
    assert question["agent"] == asker
    assert question["status"] == "open"
    answered = op.api("POST", f"/api/questions/{question['id']}/answer", {"answer": "Good day"})
    assert answered["answer"] == "Good day"
    approval = demo.wait_open("approvals", approver)
    decided = op.api("POST", f"/api/approvals/{approval['id']}/approve", {"reason": "ok"})
    assert decided["status"] == "approved"
    # The agents were waiting on their sockets; the answers reached them.
    assert demo.wait_agent_status(asker, {"done"}) == "done"
    assert demo.wait_agent_status(approver, {"done"}) == "done"
    greeting = op.api("GET", f"/api/agents/{asker}/state/report/greeting.txt")
    assert greeting == b"Good day"
    # The same request without the CSRF token is refused, and nothing changes.
    csrf = op.cookies.pop("hive_csrf")
    try:
        status, _ = op.request("POST", f"/api/agents/{asker}/stop")
    finally:
        op.cookies["hive_csrf"] = csrf
    assert status == 403
    assert op.api("GET", f"/api/agents/{asker}")["running"] == "running"


def test_each_agent_runs_in_its_own_namespace_as_its_own_uid(stack: Stack) -> None:
    op = stack.demo._op()
    agents = {a["name"]: a for a in op.api("GET", "/api/agents")["agents"]}
    assert sorted(agents) == sorted(name for name, _ in stack.opts.agents)
    uids = {a["uid"] for a in agents.values()}
    assert len(uids) == 3
    # Registered without a uid: hive-priv allocated each from its never-reused range.
    assert all(uid in AGENT_IDS for uid in uids), uids
    for name, agent in agents.items():
        assert agent["running"] == "running"
        # Each in a control group of its own, with [agents]' default limits.
        resources = agent["resources"]
        assert resources["memory_max_bytes"] == 1 << 30
        assert (resources["cpu_max"], resources["tasks_max"]) == (1.0, 512)
        assert 1 <= resources["tasks"] <= 512
        assert 0 < resources["memory_bytes"] < 1 << 30
        assert f"{stack.opts.netns_prefix}{name}" in list_namespaces(stack.opts.netns_prefix)
        sock = Path(agent["socket"])
        st = sock.lstat()
        assert (st.st_uid, st.st_mode & 0o777) == (agent["uid"], 0o600)
        # Its web UI, from inside its namespace, through the gateway, with the prefix.
        status, page = op.request("GET", f"/agent/{name}/")
        assert status == 200
        assert f"Agent {name}".encode() in page


_AGENT_FLOW = """
import json, sys
sys.path.insert(0, sys.argv[1])
from sample_agent import AgentError, AgentSocket
me = AgentSocket(sys.argv[2])
out = {"whoami": me.whoami()}
me.write_state("from-test.txt", b"written on my own socket")
me.message("hello from the e2e test")
try:
    me.request("POST", "/api/questions/1/answer", {"answer": "spoofed"})
except AgentError as e:
    out["operator_action"] = e.status
try:
    AgentSocket(sys.argv[3]).whoami()
except AgentError as e:
    out["other_socket"] = e.status
print(json.dumps(out))
"""


def test_an_agent_speaks_only_for_itself_on_its_own_socket(stack: Stack) -> None:
    op = stack.demo._op()
    worker, asker = stack.agent("worker"), stack.agent("asker")
    config = stack.demo.config
    user = lookup_user(agent_user_name(worker))
    assert user is not None
    proc = subprocess.run(
        [
            "/usr/bin/python3",
            "-I",
            "-c",
            _AGENT_FLOW,
            str(SAMPLE_AGENT.parent),
            str(config.agent_socket(worker)),
            str(config.agent_socket(asker)),
        ],
        user=user.uid,
        group=user.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["whoami"]["principal"] == f"agent:{worker}"
    assert out["operator_action"] == 404  # no operator route exists on a socket
    assert out["other_socket"] == 0  # the kernel refuses the connection (file mode)
    state = op.api("GET", f"/api/agents/{worker}/state/from-test.txt")
    assert state == b"written on my own socket"
    details = op.api("GET", f"/api/agents/{worker}")
    assert "hello from the e2e test" in [m["text"] for m in details["messages"]]
    # root may open the file, but the socket speaks only for the agent's uid.
    sample = _sample_agent()
    with pytest.raises(sample.AgentError) as refused:
        sample.AgentSocket(str(config.agent_socket(worker))).whoami()
    assert refused.value.status == 403


def test_the_live_audit_with_the_probe_holds(stack: Stack) -> None:
    octet = secrets.randbelow(250)
    code, report = stack.demo.audit(
        "--probe",
        "--outside-v4",
        f"198.18.{octet}.0/30",
        "--outside-v6",
        f"2001:db8:{secrets.token_hex(2)}::/126",
    )
    assert report is not None
    assert "sections" in report, report
    failed = [c for s in report["sections"] for c in s["checks"] if c["status"] == "fail"]
    assert code == 0, failed
    probe = next(c for s in report["sections"] for c in s["checks"] if c["id"] == "network.probe")
    assert probe["status"] == "pass"


def test_a_second_run_after_a_crash_cleans_up_and_starts(stack: Stack) -> None:
    # A crash: every daemon killed at once, the agents left behind.
    for proc in stack.demo.procs.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    stack.demo.procs.clear()
    stack.demo.operator = None
    stack.demo = Demo(stack.opts, say=lambda line: None)
    stack.demo.start()
    stack.remember_pids()
    agents = stack.demo._op().api("GET", "/api/agents")["agents"]
    assert sorted(a["name"] for a in agents) == sorted(n for n, _ in stack.opts.agents)
    assert {a["running"] for a in agents} == {"running"}
    assert len(list_namespaces(stack.opts.netns_prefix)) == 3


_AS_THE_CORE = r"""
import errno, json, os, sys
run, state, agent = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
def attempt(key, call, *args):
    try:
        call(*args)
        out[key] = "done"
    except OSError as e:
        out[key] = errno.errorcode[e.errno]
attempt("rename priv.sock", os.rename, f"{run}/priv.sock", f"{run}/mine.sock")
attempt("unlink priv.sock", os.unlink, f"{run}/priv.sock")
attempt("rename RUN/agents", os.rename, f"{run}/agents", f"{run}/agents-mine")
attempt("rename STATE/agents", os.rename, f"{state}/agents", f"{state}/agents-mine")
attempt("rename an agent's directory", os.rename, f"{state}/agents/{agent}", f"{state}/agents/x")
attempt("rename hive.toml", os.rename, f"{run}/hive.toml", f"{run}/hive-mine.toml")
attempt("own file in RUN", lambda: open(f"{run}/core-probe", "w").close())
attempt("remove own file", os.unlink, f"{run}/core-probe")
print(json.dumps(out))
"""


def test_the_core_can_make_its_files_but_cannot_rename_or_remove_hive_privs(stack: Stack) -> None:
    # RUN and STATE are root:hive-core 1775 (sticky): the core creates core.sock
    # and hive.db there, and nothing of hive-priv's can it rename or remove.
    core = lookup_user(stack.opts.core_user)
    assert core is not None
    for top in (stack.opts.run_dir, stack.opts.state_dir):
        st = top.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, core.gid, 0o1775), top
    name = stack.agent("asker")
    for mine in (
        stack.opts.run_dir / "agents",
        stack.opts.state_dir / "agents",
        stack.opts.state_dir / "agents" / name,
    ):
        st = mine.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755), mine
    done = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            _AS_THE_CORE,
            str(stack.opts.run_dir),
            str(stack.opts.state_dir),
            name,
        ],
        user=core.uid,
        group=core.gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",
    )
    assert json.loads(done.stdout) == {
        "rename priv.sock": "EPERM",
        "unlink priv.sock": "EPERM",
        "rename RUN/agents": "EPERM",
        "rename STATE/agents": "EPERM",
        "rename an agent's directory": "EACCES",
        "rename hive.toml": "EPERM",
        "own file in RUN": "done",
        "remove own file": "done",
    }
    assert (stack.opts.run_dir / "priv.sock").exists()


def test_stopping_leaves_nothing_behind(stack: Stack) -> None:
    opts = stack.opts
    uids = [a["uid"] for a in stack.demo._op().api("GET", "/api/agents")["agents"]]
    assert len(uids) == len(opts.agents)
    stack.demo.stop()
    assert list_namespaces(opts.netns_prefix) == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert [line for line in links.splitlines() if f": {opts.ifprefix}" in line] == []
    assert not Nft(opts.table).exists()
    assert not opts.run_dir.exists()  # core.sock, priv.sock, agents/*.sock with it
    for pid in stack.pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"enforcer" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    for uid in uids:
        assert processes_of_uid(uid) == []
    for name, _ in opts.agents:
        assert not (opts.state_dir / "agents" / name).exists()
