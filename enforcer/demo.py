"""``hive-boundary demo`` (what ``make demo`` runs): the whole stack on this host.

As root, one command: it creates the service users, starts hive-priv through
socket activation (``systemd-socket-activate`` on ``RUN/priv.sock``, group
``hive-core``, 0660), the core and the gateway as their own unprivileged
users, logs in to the gateway with the operator token like a browser would,
and registers three demo agents through the operator API - each one a real
container of hive-priv's netns backend (own user, own network namespace, own
socket, own small web UI; the program is ``examples/sample_agent.py``):

- ``asker`` asks the operator a question and waits for the answer;
- ``approver`` requests the operator's approval and waits for the decision;
- ``worker`` writes state files and sends messages.

Ctrl-C (SIGINT/SIGTERM) destroys the agents through the operator API, stops
the daemons by PID and removes what is left: namespaces, veths, the nftables
table, the run directory. A previous run that crashed is cleaned up first
(only what the demo owns: its table, its agents' namespaces and users, its
run directory, the daemons whose PIDs it recorded).

The e2e test (``tests/demo``) runs this same start-up path: :class:`Demo`
with temporary directories and unique names. ``--once`` starts, plays the
operator (answers the question, approves the request), prints the summary
and stops.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.cookies
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from enforcer import cgroups
from enforcer.config import HiveConfig, default_policy_dir, load_config
from enforcer.containers import processes_of_uid
from enforcer.errors import HiveError
from enforcer.files import replace_file
from enforcer.priv import spawn_socket_activated
from enforcer.priv_client import PrivClient
from enforcer.sessions import (
    CSRF_COOKIE,
    CSRF_HEADER,
    cookie_name,
    session_dir,
)
from enforcer.users import (
    CORE_USER,
    GATEWAY_USER,
    SystemUser,
    agent_user_name,
    ensure_system_user,
    lookup_user,
)

__all__ = [
    "DEMO_AGENTS",
    "SAMPLE_AGENT",
    "Demo",
    "DemoError",
    "DemoOptions",
    "OperatorSession",
    "register",
    "render_config",
    "run",
]

REPO = Path(__file__).resolve().parent.parent
SAMPLE_AGENT = REPO / "examples" / "sample_agent.py"

DEMO_AGENTS: tuple[tuple[str, str], ...] = (
    ("asker", "asker"),
    ("approver", "approver"),
    ("worker", "worker"),
)
"""(agent name, role of examples/sample_agent.py)."""


class DemoError(HiveError):
    """The demo cannot start (the reason says what to do)."""

    code = "demo_failed"
    status = 503


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Where the demo puts things and how it names them (tests make all of it unique)."""

    run_dir: Path = Path("/run/hive")
    state_dir: Path = Path("/var/lib/hive")
    policy_dir: Path = field(default_factory=default_policy_dir)
    host: str = "127.0.0.1"
    port: int = 8080
    table: str = "hive"
    netns_prefix: str = "hive-"
    ifprefix: str = "hv-"
    # hive-priv puts each agent's control group in <its own group>/<cgroup_parent>/<agent>.
    cgroup_parent: str = "hive-agents"
    agents: tuple[tuple[str, str], ...] = DEMO_AGENTS
    core_user: str = CORE_USER
    gateway_user: str = GATEWAY_USER
    agent_python: str = "/usr/bin/python3"
    timeout: float = 30.0

    @property
    def config_path(self) -> Path:
        """The hive.toml the demo writes and every daemon (and the audit) reads."""
        return self.run_dir / "hive.toml"

    @property
    def log_dir(self) -> Path:
        """Daemon logs; kept after the demo stops."""
        return self.state_dir / "logs"

    @property
    def origin(self) -> str:
        """The gateway's origin."""
        return f"http://{self.host}:{self.port}"

    def audit_args(self) -> list[str]:
        """``hive-boundary audit`` arguments for this installation."""
        return [
            "--config",
            str(self.config_path),
            "--table",
            self.table,
            "--netns-prefix",
            self.netns_prefix,
            "--ifprefix",
            self.ifprefix,
        ]


def _toml_str(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def render_config(opts: DemoOptions) -> str:
    """The demo's hive.toml (pure)."""
    return (
        "# Written by `hive-boundary demo`; read by hive-priv, the core, the gateway, the audit.\n"
        f"run_dir = {_toml_str(opts.run_dir)}\n"
        f"state_dir = {_toml_str(opts.state_dir)}\n"
        f"policy_dir = {_toml_str(opts.policy_dir)}\n\n"
        "[core]\n"
        f"user = {_toml_str(opts.core_user)}\n"
        'backend = "priv"\n\n'
        "[gateway]\n"
        f"listen = {_toml_str(f'{opts.host}:{opts.port}')}\n"
        f"user = {_toml_str(opts.gateway_user)}\n"
    )


# --- the operator, as a browser would be -------------------------------------------


class OperatorSession:
    """Logged in to the gateway with the operator token: session cookie + CSRF + Origin."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.origin = f"http://{host}:{port}"
        self.cookies: dict[str, str] = {}

    def _send(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            for raw in resp.headers.get_all("Set-Cookie") or []:
                jar = http.cookies.SimpleCookie()
                jar.load(raw)
                for key, morsel in jar.items():
                    self.cookies[key] = morsel.value
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def login(self, token: str) -> None:
        """``POST /login`` with the token, as the login form does."""
        body = f"token={token}&next=/".encode()
        status, _, _ = self._send(
            "POST",
            "/login",
            body,
            {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin},
        )
        if status != 303 or cookie_name(False) not in self.cookies:
            raise DemoError(f"operator login at {self.origin}/login failed (HTTP {status})")

    def request(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        """A request to the core through the gateway; JSON decoded when it is JSON."""
        headers = {"Accept": "application/json"}
        data = None
        if method not in {"GET", "HEAD"}:
            headers["Origin"] = self.origin
            headers[CSRF_HEADER] = self.cookies.get(CSRF_COOKIE, "")
            data = json.dumps(body if body is not None else {}).encode()
            headers["Content-Type"] = "application/json"
        status, resp_headers, raw = self._send(method, target, data, headers)
        if resp_headers.get("content-type", "").startswith("application/json"):
            return status, json.loads(raw)
        return status, raw

    def api(
        self, method: str, target: str, body: Any = None, ok: tuple[int, ...] = (200, 201)
    ) -> Any:
        """Like :meth:`request`; :class:`DemoError` unless the status is in ``ok``."""
        status, value = self.request(method, target, body)
        if status not in ok:
            reason = value.get("reason") if isinstance(value, dict) else value[:200]
            raise DemoError(f"{method} {target}: HTTP {status}: {reason}")
        return value


# --- processes ---------------------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[19]


def _stop_pid(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for(
    what: str, ready: Callable[[], bool], timeout: float, alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise DemoError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def _connects_unix(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local address "ADDR:PORT" (hex), state 0A = LISTEN, inode is field 9
                if (
                    len(fields) > 9
                    and fields[3] == "0A"
                    and int(fields[1].split(":")[1], 16) == port
                ):
                    inodes.add(fields[9])
    return inodes


def _holds_listener(pid: int, port: int) -> bool:
    """Whether process ``pid`` itself holds the socket listening on ``port``."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return False
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return True
    return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _connects_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


# --- the demo --------------------------------------------------------------------------------


class Demo:
    """Start-up, the operator flow, the summary and the clean stop, as separate steps."""

    def __init__(self, opts: DemoOptions, say: Callable[[str], None] = print) -> None:
        self.opts = opts
        self.say = say
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.operator: OperatorSession | None = None
        self.core_user: SystemUser | None = None
        self.gateway_user: SystemUser | None = None
        self._step = 0

    # --- small helpers ---------------------------------------------------------

    @property
    def config(self) -> HiveConfig:
        """The configuration every daemon reads."""
        return load_config(self.opts.config_path)

    @property
    def pidfile(self) -> Path:
        """PIDs (and start times) of the daemons this run started, for a later clean-up."""
        return self.opts.run_dir / "demo.pids"

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Print ``[n] text ...`` then ``ok`` (or the failure)."""
        self._step += 1
        started = time.monotonic()
        self.say(f"[{self._step}] {text} ...")
        yield
        self.say(f"    ok ({time.monotonic() - started:.1f} s)")

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def _log(self, name: str) -> Any:
        self.opts.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return (self.opts.log_dir / f"{name}.log").open("ab")

    def _record_pids(self) -> None:
        data = {n: [p.pid, _proc_start(p.pid)] for n, p in self.procs.items()}
        # RUN is root:hive-core 1775: never written through a name the core
        # could have planted (a symlink, or a file of its own to edit later).
        replace_file(self.pidfile, json.dumps(data).encode(), mode=0o600)

    # --- start-up ------------------------------------------------------------------

    def start(self) -> None:
        """Everything up to three running agents; :class:`DemoError` (after stopping) if not."""
        try:
            with self.step("checking this host (root, systemd-socket-activate, nftables)"):
                self.preflight()
            with self.step("removing leftovers of an earlier run"):
                self.cleanup_leftovers()
            with self.step("creating users (hive-core, hive-gateway, one per agent)"):
                self.create_users()
            with self.step("preparing directories, configuration and the operator token"):
                self.prepare_files()
            with self.step("starting hive-priv, socket-activated on priv.sock (root)"):
                self.start_priv()
            with self.step(f"starting the core as {self.opts.core_user}"):
                self.start_core()
            with self.step(
                f"starting the gateway as {self.opts.gateway_user} on {self.opts.origin}"
            ):
                self.start_gateway()
            with self.step("logging in as the operator (token -> session -> CSRF)"):
                self.login()
            names = ", ".join(n for n, _ in self.opts.agents)
            with self.step(f"creating the agents through the operator API: {names}"):
                self.create_agents()
            with self.step("waiting for each agent's web UI through the gateway"):
                self.wait_for_agent_uis()
        except BaseException:
            self.stop()
            raise

    def preflight(self) -> None:
        """Root, the tools, the sample agent's interpreter."""
        if os.geteuid() != 0:
            raise DemoError("the demo needs root (it creates users, namespaces, nftables)")
        for tool in ("systemd-socket-activate", "setsid", "nft", "ip", "useradd"):
            if shutil.which(tool, path=self._env()["PATH"]) is None:
                raise DemoError(f"{tool} is missing: run scripts/setup.sh (make demo does)")
        if not Path(self.opts.agent_python).is_file():
            raise DemoError(f"{self.opts.agent_python} is missing (the agents' interpreter)")

    def cleanup_leftovers(self) -> None:
        """What a crashed earlier run may have left: only what the demo owns."""
        with contextlib.suppress(OSError, ValueError):
            if self.pidfile.lstat().st_uid != 0 or not self.pidfile.is_file():
                raise ValueError("not root's own pid file: its pids are not trusted")
            for pid, start in json.loads(self.pidfile.read_text()).values():
                # Only the very process we started: same pid *and* start time.
                if start is not None and _proc_start(int(pid)) == start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        self.sweep()

    def sweep(self) -> None:
        """Remove the demo's agents' processes and networks, its table and run directory."""
        from netns.apply import Nft
        from netns.links import host_ifname, remove_container_links

        for name, _ in self.opts.agents:
            user = lookup_user(agent_user_name(name))
            if user is not None:
                for _ in range(100):
                    pids = processes_of_uid(user.uid)
                    if not pids:
                        break
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.02)
            with contextlib.suppress(HiveError, OSError):
                remove_container_links(
                    self.opts.netns_prefix + name, host_ifname(name, self.opts.ifprefix)
                )
        with contextlib.suppress(HiveError, OSError):
            Nft(self.opts.table).delete_table()
        cgroups.sweep(self.opts.cgroup_parent)
        shutil.rmtree(self.opts.run_dir, ignore_errors=True)

    def create_users(self) -> None:
        """The service users (kept if they exist).

        Not the agents': registered without a uid, each gets its user from
        hive-priv, with a uid it never hands out twice (and removes it with
        the container).
        """
        self.core_user = ensure_system_user(self.opts.core_user)
        self.gateway_user = ensure_system_user(self.opts.gateway_user)

    def prepare_files(self) -> None:
        """RUN and STATE as hive-core.service makes them, hive.toml, the operator token."""
        assert self.core_user is not None
        assert self.gateway_user is not None
        core_gid = self.core_user.gid
        for d in (self.opts.run_dir, self.opts.state_dir):
            d.mkdir(parents=True, exist_ok=True)
            # root:hive-core 1775: the core creates its own files (core.sock,
            # hive.db); the sticky bit keeps it from removing hive-priv's.
            os.chown(d, 0, core_gid)
            os.chmod(d, 0o1775)  # noqa: S103 - sticky, group-writable by design
        for d in (self.opts.run_dir / "agents", self.opts.state_dir / "agents"):
            # hive-priv's, traversed by every agent (root 0755, made before the
            # core starts so that the core never owns it).
            d.mkdir(exist_ok=True)
            os.chown(d, 0, 0)
            os.chmod(d, 0o755)  # noqa: S103 - agents traverse it; no secrets
        replace_file(self.opts.config_path, render_config(self.opts).encode(), mode=0o644)
        os.chmod(self.opts.config_path, 0o644)  # whatever the umask
        # An earlier version kept the operator token in STATE itself: a stale
        # secret nothing reads any more.
        with contextlib.suppress(FileNotFoundError):
            (self.opts.state_dir / "operator-token").unlink()
        # The gateway's own directory (session key, revocations, the operator
        # token): its workers create what is in it - the token too, at first
        # start, as under the shipped unit - but may not create it in STATE
        # (root:hive-core). A fresh demo starts with no sessions and a new
        # token (and no files of an old uid).
        gateway_dir = session_dir(self.opts.state_dir)
        shutil.rmtree(gateway_dir, ignore_errors=True)
        gateway_dir.mkdir(mode=0o700)
        os.chown(gateway_dir, self.gateway_user.uid, self.gateway_user.gid)
        os.chmod(gateway_dir, 0o700)
        # Can the unprivileged daemons read the code? (Fail here, not in a log.)
        probe = subprocess.run(
            [sys.executable, "-c", "import enforcer.core, enforcer.gateway"],
            user=self.core_user.uid,
            group=self.core_user.gid,
            extra_groups=[],
            cwd="/",
            env=self._env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode != 0:
            raise DemoError(
                f"{self.opts.core_user} cannot import hive-boundary from {REPO} with "
                f"{sys.executable}: make the repository and .venv readable to all "
                f"(chmod -R o+rX): {probe.stderr.strip().splitlines()[-1:]}"
            )

    def start_priv(self) -> None:
        """``systemd-socket-activate`` on priv.sock (root:hive-core 0660) -> hive-priv."""
        assert self.core_user is not None
        args = [
            "--config",
            str(self.opts.config_path),
            "--table",
            self.opts.table,
            "--netns-prefix",
            self.opts.netns_prefix,
            "--ifprefix",
            self.opts.ifprefix,
            "--cgroup-parent",
            self.opts.cgroup_parent,
        ]
        with self._log("hive-priv") as log:
            self.procs["priv"] = spawn_socket_activated(
                self.config.priv_socket,
                args,
                group_gid=self.core_user.gid,
                env={**self._env(), "HIVE_CONFIG": str(self.opts.config_path)},
                # setsid(1) (no fork: the activator is no group leader, so the pid
                # and LISTEN_PID stay) puts hive-priv outside the terminal's process
                # group: Ctrl-C reaches the demo, which destroys the containers
                # through hive-priv before it stops hive-priv.
                executable=["setsid", sys.executable, "-m", "enforcer.cli"],
                stderr=log,
            )
        self._record_pids()
        # The first connection activates hive-priv. As root (which hive-priv
        # also serves) remove containers of our agents left by a crashed run.
        client = PrivClient(self.config.priv_socket, timeout=self.opts.timeout)
        for name, _ in self.opts.agents:
            with contextlib.suppress(HiveError):
                _run_async(client.container_destroy(name))

    def _spawn_as(self, key: str, user: SystemUser, argv: list[str]) -> subprocess.Popen[bytes]:
        with self._log(key) as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "enforcer.cli",
                    *argv,
                    "--config",
                    str(self.opts.config_path),
                ],
                user=user.uid,
                group=user.gid,
                extra_groups=[],
                umask=0o027,
                cwd="/",
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.procs[key] = proc
        self._record_pids()
        return proc

    def start_core(self) -> None:
        """The core as its user; then core.sock's group becomes the gateway's."""
        assert self.core_user is not None
        assert self.gateway_user is not None
        proc = self._spawn_as("core", self.core_user, ["core"])
        sock = self.config.core_socket
        _wait_for(
            f"the core (log: {self.opts.log_dir / 'core.log'})",
            lambda: sock.exists() and _connects_unix(sock),
            self.opts.timeout,
            lambda: proc.poll() is None,
        )
        # core.sock is 0660 hive-core:hive-core; the gateway reaches it through
        # its group (like SocketGroup= does for priv.sock). The core still
        # checks the peer's uid on every connection.
        os.chown(sock, -1, self.gateway_user.gid, follow_symlinks=False)

    def start_gateway(self) -> None:
        """The gateway as its user, on the demo's origin."""
        assert self.gateway_user is not None
        host, port = self.opts.host, self.opts.port
        # The operator token is sent to this port next: it must be our gateway
        # listening there, never a process someone else started on it first.
        if not _port_free(host, port):
            raise DemoError(
                f"{host}:{port} is already in use by another process: the demo will not "
                "send the operator token there (stop it, or pick another port)"
            )
        proc = self._spawn_as("gateway", self.gateway_user, ["gateway"])
        _wait_for(
            f"the gateway (log: {self.opts.log_dir / 'gateway.log'})",
            lambda: _holds_listener(proc.pid, port) and _connects_tcp(host, port),
            self.opts.timeout,
            lambda: proc.poll() is None,
        )

    def login(self) -> OperatorSession:
        """Log in with the operator token, as the login form does."""
        token = self.config.operator_token_file.read_text().strip()
        operator = OperatorSession(self.opts.host, self.opts.port, self.opts.timeout)
        operator.login(token)
        self.operator = operator
        return operator

    def create_agents(self) -> None:
        """Register and start each agent through the operator API (the real path)."""
        op = self._op()
        registered = {a["name"] for a in op.api("GET", "/api/agents")["agents"]}
        for name, role in self.opts.agents:
            if name in registered:  # left by a crashed run: start afresh
                op.api("POST", f"/api/agents/{name}/destroy")
            command = [self.opts.agent_python, "-I", str(SAMPLE_AGENT), "--role", role]
            body = {"name": name, "command": command}  # hive-priv allocates the uid
            op.api("POST", "/api/agents", body)
            op.api("POST", f"/api/agents/{name}/start")

    def wait_for_agent_uis(self) -> None:
        """Each agent's own page, proxied by the gateway from inside its namespace."""
        op = self._op()
        for name, _ in self.opts.agents:
            deadline = time.monotonic() + self.opts.timeout
            while True:
                status, _ = op.request("GET", f"/agent/{name}/")
                if status == 200:
                    break
                if time.monotonic() > deadline:
                    raise DemoError(f"agent {name}'s web UI did not answer (HTTP {status})")
                time.sleep(0.2)

    def _op(self) -> OperatorSession:
        if self.operator is None:
            raise DemoError("not logged in")
        return self.operator

    # --- the operator's part (--once; in the browser otherwise) -------------------------

    def wait_open(self, kind: str, agent: str) -> dict[str, Any]:
        """The first open question / pending approval of ``agent`` (waits for it)."""
        op = self._op()
        status = "open" if kind == "questions" else "pending"
        deadline = time.monotonic() + self.opts.timeout
        while time.monotonic() < deadline:
            items = op.api("GET", f"/api/{kind}?status={status}&agent={agent}")[kind]
            if items:
                item: dict[str, Any] = items[0]
                return item
            time.sleep(0.2)
        raise DemoError(f"agent {agent} has no open {kind} after {self.opts.timeout:.0f} s")

    def wait_agent_status(self, agent: str, states: set[str]) -> str:
        """Wait until ``agent`` reports one of ``states``."""
        op = self._op()
        deadline = time.monotonic() + self.opts.timeout
        while True:
            status = str(op.api("GET", f"/api/agents/{agent}")["status"])
            if status in states or time.monotonic() > deadline:
                return status
            time.sleep(0.2)

    def play_operator(self) -> None:
        """Answer the asker's question and approve the approver's request."""
        by_role = {role: name for name, role in self.opts.agents}
        op = self._op()
        if "asker" in by_role:
            question = self.wait_open("questions", by_role["asker"])
            answer = question["options"][0] if question["options"] else "yes"
            op.api("POST", f"/api/questions/{question['id']}/answer", {"answer": answer})
            self.say(f"    answered question {question['id']} of {by_role['asker']}: {answer!r}")
        if "approver" in by_role:
            approval = self.wait_open("approvals", by_role["approver"])
            op.api("POST", f"/api/approvals/{approval['id']}/approve", {"reason": "demo"})
            self.say(f"    approved request {approval['id']} of {by_role['approver']}")
        for name, _ in self.opts.agents:
            self.wait_agent_status(name, {"done", "idle"})

    # --- summary ------------------------------------------------------------------------

    def audit(self, *extra: str) -> tuple[int, dict[str, Any] | None]:
        """``hive-boundary audit --live ... --json``: (exit code, report)."""
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "enforcer.cli",
                "audit",
                "--live",
                "--json",
                *extra,
                *self.opts.audit_args(),
            ],
            capture_output=True,
            text=True,
            env=self._env(),
            check=False,
            timeout=300,
        )
        try:
            report = json.loads(proc.stdout)
        except ValueError:
            report = None
        return proc.returncode, report

    def summary(self, *, audit: bool = True) -> tuple[str, int]:
        """A one-screen summary and the audit's exit code (-1 if not run)."""
        op = self._op()
        lines = ["", f"  {'agent':<14}{'container':<11}{'status':<10}detail"]
        for agent in op.api("GET", "/api/agents")["agents"]:
            lines.append(
                f"  {agent['name']:<14}{agent['running']:<11}{agent['status']:<10}"
                f"{agent.get('status_detail', '')[:44]}"
            )
        open_q = op.api("GET", "/api/questions?status=open")["questions"]
        pending = op.api("GET", "/api/approvals?status=pending")["approvals"]
        lines.append(f"\n  waiting for you: {len(open_q)} question(s), {len(pending)} approval(s)")
        code = -1
        if audit:
            code, report = self.audit()
            lines.append("  " + _audit_line(code, report))
        return "\n".join(lines), code

    def banner(self) -> str:
        """How to reach the demo and log in."""
        token = self.config.operator_token_file
        return "\n".join(
            [
                "",
                f"  hive-boundary is running. Open {self.opts.origin}/ in a browser.",
                f"  Log in with the operator token:  cat {token}",
                f"  Daemon logs: {self.opts.log_dir}/  Configuration: {self.opts.config_path}",
                "  Audit it:  .venv/bin/hive-boundary audit --live --probe "
                + " ".join(self.opts.audit_args()),
                "  Ctrl-C stops everything and removes what the demo made.",
            ]
        )

    # --- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Destroy the agents (operator API, else hive-priv), stop the daemons, sweep."""
        if self.operator is not None and self.procs.get("gateway") is not None:
            for name, _ in self.opts.agents:
                with contextlib.suppress(HiveError, OSError, ValueError):
                    self.operator.request("POST", f"/api/agents/{name}/destroy")
        priv = self.procs.get("priv")
        if priv is not None and priv.poll() is None:
            client = PrivClient(self.config.priv_socket, timeout=self.opts.timeout)
            for name, _ in self.opts.agents:
                with contextlib.suppress(HiveError, OSError):
                    _run_async(client.container_destroy(name))
        for key in ("gateway", "core", "priv"):
            proc = self.procs.pop(key, None)
            if proc is not None:
                _stop_pid(proc)
        self.operator = None
        self.sweep()
        for name, _ in self.opts.agents:
            shutil.rmtree(self.opts.state_dir / "agents" / name, ignore_errors=True)

    def alive(self) -> list[str]:
        """Daemons that exited on their own (empty: all well)."""
        return [k for k, p in self.procs.items() if p.poll() is not None]


def _run_async(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _audit_line(code: int, report: dict[str, Any] | None) -> str:
    if report is None or "sections" not in report:
        reason = report.get("error") if isinstance(report, dict) else "no report"
        return f"audit --live: could not run (exit {code}): {reason}"
    checks = [c for s in report["sections"] for c in s.get("checks", [])]
    failed = [c for c in checks if c.get("status") == "fail"]
    passed = sum(c.get("status") == "pass" for c in checks)
    verdict = "every check holds" if code == 0 else f"{len(failed)} finding(s)"
    out = f"audit --live: {verdict} ({passed} of {len(checks)} checks pass, exit {code})"
    for c in failed[:3]:
        out += f"\n    FAIL {c.get('id')}: {c.get('summary', '')}"[:100]
    return out


# --- CLI ----------------------------------------------------------------------------------------


def _options(args: argparse.Namespace) -> DemoOptions:
    host, _, port = str(args.listen).rpartition(":")
    if not host or not port.isdigit():
        raise DemoError("--listen must be HOST:PORT")
    return replace(
        DemoOptions(),
        run_dir=args.run_dir,
        state_dir=args.state_dir,
        policy_dir=args.policy or default_policy_dir(),
        host=host.strip("[]"),
        port=int(port),
        table=args.table,
        netns_prefix=args.netns_prefix,
        ifprefix=args.ifprefix,
        cgroup_parent=args.cgroup_parent,
    )


def run(args: argparse.Namespace) -> int:
    """``hive-boundary demo``: 0 stopped cleanly (``--once``: the flow and the audit held)."""
    try:
        demo = Demo(_options(args))
    except HiveError as e:
        print(f"hive-boundary demo: {e.reason}", file=sys.stderr)
        return 2
    # SIGTERM stops like Ctrl-C does; SIGINT explicitly, since a shell starts
    # background jobs with it ignored.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        demo.start()
        print(demo.banner(), flush=True)
        if args.once:
            print("[*] playing the operator: answering, approving ...", flush=True)
            demo.play_operator()
            text, audit_code = demo.summary()
            print(text, flush=True)
            code = 0 if audit_code == 0 else 1
        else:
            text, _ = demo.summary()
            print(text, "\n\n  (Ctrl-C to stop)", flush=True)
            while not (dead := demo.alive()):
                time.sleep(1)
            print(f"hive-boundary demo: {', '.join(dead)} exited; stopping", file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        print("\n[*] stopping ...", flush=True)
    except HiveError as e:
        print(f"hive-boundary demo: {e.reason}", file=sys.stderr)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip clean-up
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        demo.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("[*] stopped; nothing left running.", flush=True)
    return code


def register(subparsers: Any) -> None:
    """Add ``demo`` to the ``hive-boundary`` parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the whole stack with three demo agents on this host (root; Ctrl-C stops it)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument(
        "--run-dir", type=Path, default=Path("/run/hive"), help="RUN (default /run/hive)"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/hive"),
        help="STATE (default /var/lib/hive)",
    )
    p.add_argument("--policy", type=Path, metavar="DIR", help="policy directory (default: shipped)")
    p.add_argument("--listen", default="127.0.0.1:8080", help="the gateway's HOST:PORT")
    p.add_argument("--table", default="hive", help="the nftables table (inet) to own")
    p.add_argument("--netns-prefix", default="hive-", help="namespace name prefix")
    p.add_argument("--ifprefix", default="hv-", help="host-side veth name prefix")
    p.add_argument(
        "--cgroup-parent",
        default="hive-agents",
        help="agents' control groups: <hive-priv's group>/NAME/<agent>",
    )
    p.add_argument(
        "--once",
        "--no-wait",
        action="store_true",
        help="start, play the operator, print the summary, stop (exit 1 on any finding)",
    )
    p.set_defaults(run=run)
