"""hive-priv: the only root process. Socket-activated, peer-checked, narrow.

``hive-boundary priv`` takes its listening socket from systemd's socket
activation protocol (``LISTEN_FDS``/``LISTEN_PID``, fd 3) and refuses to start
otherwise: there is no self-bind fallback, so development and production take
the same path and the socket's group/mode always come from whoever bound it
(``hive-priv.socket``: group ``hive-core``, 0660; in development
:func:`spawn_socket_activated`, see below).

Each connection is authorised by ``SO_PEERCRED``: only the configured core
uid and root are served; anyone else gets one ``forbidden`` response and is
logged. A connection carries newline-framed JSON requests
(:mod:`enforcer.priv_protocol`), each answered by one response line; a bad
request gets an error response and never takes the daemon down. Each request
is also checked against the policy as ``(service:core, priv, resource,
action)``. Every request and its result is logged (structlog JSON).

The server is a small threaded accept loop: every connection has its own
thread and all container work is serialised inside the backend.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enforcer.cgroups import AgentCgroups, Limits
from enforcer.config import HiveConfig, load_config
from enforcer.containers import NetnsBackend
from enforcer.errors import Forbidden, HiveError, PayloadTooLarge
from enforcer.log import configure_logging, get_logger
from enforcer.policy import AccessRequest, Policy, PolicyEngine, PolicyError
from enforcer.policy.follow import FOLLOW_SECONDS, Follower
from enforcer.priv_protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_TYPES,
    ContainerCreate,
    ContainerDestroy,
    ContainerRestart,
    ContainerStart,
    ContainerStatus,
    ContainerStop,
    IsolationApply,
    IsolationRemove,
    PrivRequest,
    SocketCreate,
    StateRead,
    decode_request,
    encode_error,
    encode_ok,
)
from netns.policy import NetworkPolicy

if TYPE_CHECKING:  # netns.manager (pyroute2, nftables) is imported only where it runs
    from netns.manager import DriftReport

__all__ = [
    "NotSocketActivated",
    "PrivServer",
    "PrivStartupError",
    "add_arguments",
    "agent_limits",
    "peer_credentials",
    "run",
    "spawn_socket_activated",
    "take_activated_socket",
]

PRINCIPAL = "service:core"
CHANNEL = "priv"
_IDLE_TIMEOUT = 300.0


def _log() -> Any:
    # Looked up at each use: structlog is configured after import (in run()).
    return get_logger("hive.priv")


class NotSocketActivated(HiveError):
    """hive-priv was started without a socket from systemd's activation protocol."""

    code = "not_socket_activated"


class PrivStartupError(HiveError):
    """hive-priv cannot start: no core user, no valid policy."""

    code = "priv_startup"


def take_activated_socket() -> socket.socket:
    """The one listening unix stream socket passed as fd 3; raise otherwise.

    ``systemd.daemon.listen_fds`` checks ``LISTEN_PID == getpid()``, unsets
    ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` and sets close-on-exec
    (sd_listen_fds semantics); we then check the fd really is what we need.
    """
    from systemd.daemon import listen_fds

    fds: list[int] = listen_fds(True)
    if len(fds) != 1:
        raise NotSocketActivated(
            "hive-priv must be socket-activated (hive-priv.socket, or "
            "systemd-socket-activate in development): expected exactly one listening "
            f"socket via LISTEN_FDS/LISTEN_PID, got {len(fds)}; it never binds a socket itself"
        )
    fd = fds[0]
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise NotSocketActivated("fd 3 is not a listening unix stream socket")
    return sock


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer, from the kernel (``SO_PEERCRED``)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


class PrivServer:
    """Accepts on the activated socket; one thread per connection."""

    def __init__(
        self,
        listener: socket.socket,
        backend: NetnsBackend,
        engine: PolicyEngine,
        *,
        allowed_uids: frozenset[int],
        max_state_bytes: int,
        follower: Follower | None = None,
        reconcile: Callable[[], DriftReport] | None = None,
    ) -> None:
        self.listener = listener
        self.backend = backend
        self.engine = engine
        self.allowed_uids = allowed_uids
        self.max_state_bytes = max_state_bytes
        self.follower = follower
        self.reconcile = reconcile
        self._stop = threading.Event()
        self._next_follow = 0.0
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        self._next_logs = time.monotonic()

    def stop(self) -> None:
        """Make :meth:`serve_forever` return."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Accept until :meth:`stop`; also notices agents that exited by themselves."""
        # Following the policy (a load compiles it) and checking the table (an
        # nft listing, every container's links) take time: a thread of their
        # own, so that accepting requests never waits behind them.
        keeper = threading.Thread(target=self._housekeeping, name="priv-housekeeping", daemon=True)
        keeper.start()
        self.listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                self._poll_backend()
                continue
            except OSError as e:
                _log().error("priv.accept_failed", error=str(e))
                time.sleep(0.1)
                continue
            threading.Thread(target=self._serve_conn, args=(conn,), daemon=True).start()

    def _housekeeping(self) -> None:
        while not self._stop.wait(0.5):
            self._poll_policy()
            self._poll_isolation()
            self._poll_logs()

    def _poll_logs(self) -> None:
        # An agent's output file, root's and beyond any disk quota on its uid,
        # is kept bounded (containers.bound_log).
        if time.monotonic() < self._next_logs:
            return
        self._next_logs = time.monotonic() + LOG_CHECK_SECONDS
        try:
            turned = self.backend.bound_logs()
        except Exception:
            _log().exception("agent_log.bound_failed")
            return
        for name in turned:
            _log().warning("agent_log.turned_over", agent=name)

    def _poll_policy(self) -> None:
        # Follow the core's live policy revision (at most once a period). The
        # requests served meanwhile decide with the version still live.
        if self.follower is None or time.monotonic() < self._next_follow:
            return
        self._next_follow = time.monotonic() + FOLLOW_SECONDS
        try:
            self.follower.poll()
        except Exception:
            # Never the housekeeping's end: the next period tries again.
            _log().exception("policy.follow_failed")

    def _poll_isolation(self) -> None:
        # The live table can vanish behind our back (`systemctl restart
        # nftables` runs Debian's `flush ruleset`) or be changed (flags, rules);
        # containers keep their links up meanwhile. Check every few seconds and
        # repair: the whole table re-applied, drifted links re-made.
        if self.reconcile is None or time.monotonic() < self._next_reconcile:
            return
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        try:
            report = self.reconcile()
        except Exception as e:
            # Logged and tried again next period.
            _log().error("isolation.repair_failed", reason=str(e) or repr(e))
            return
        if report.repaired:
            _log().warning("isolation.repaired", drift=report.lines())

    def _poll_backend(self) -> None:
        # Reap agents that exited by themselves promptly (their exit status is
        # recorded), without waiting behind an operation in progress.
        with contextlib.suppress(HiveError, OSError):
            self.backend.reap()

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn:
            try:
                pid, uid, gid = peer_credentials(conn)
            except OSError:
                return
            peer = {"peer_pid": pid, "peer_uid": uid, "peer_gid": gid}
            if uid not in self.allowed_uids:
                _log().warning("priv.peer_refused", **peer)
                with contextlib.suppress(OSError):
                    conn.sendall(encode_error(Forbidden(f"uid {uid} may not use hive-priv")))
                return
            conn.settimeout(_IDLE_TIMEOUT)
            reader = conn.makefile("rb")
            while True:
                try:
                    line = reader.readline(MAX_REQUEST_BYTES + 1)
                except (OSError, TimeoutError):
                    return
                if not line:
                    return
                if not line.endswith(b"\n"):
                    # Over the limit (or a truncated last line): answer and drop
                    # the connection, since the framing is lost.
                    err = PayloadTooLarge(f"request longer than {MAX_REQUEST_BYTES} bytes")
                    self._send(conn, encode_error(err), None)
                    _log().warning("priv.request_refused", error=err.code, **peer)
                    return
                body, fd_sock = self._handle(line, peer)
                try:
                    self._send(conn, body, fd_sock)
                finally:
                    if fd_sock is not None:
                        fd_sock.close()

    @staticmethod
    def _send(conn: socket.socket, body: bytes, fd_sock: socket.socket | None) -> None:
        with contextlib.suppress(OSError):
            if fd_sock is None:
                conn.sendall(body)
            else:
                sent = socket.send_fds(conn, [body], [fd_sock.fileno()])
                conn.sendall(body[sent:])

    def _handle(self, line: bytes, peer: dict[str, int]) -> tuple[bytes, socket.socket | None]:
        """Decode, authorise, execute and log one request; never raises."""
        started = time.monotonic()
        fields: dict[str, Any] = dict(peer)
        try:
            request = decode_request(line)
            fields.update(request=request.TYPE, action=request.ACTION)
            if not isinstance(request, ContainerStatus):
                fields["agent"] = request.agent
            if isinstance(request, StateRead):
                fields["rel_path"] = request.rel_path
            decision = self.engine.decide(
                AccessRequest(PRINCIPAL, CHANNEL, request.resource(), request.ACTION)
            )
            fields["policy_revision"] = decision.revision
            if not decision.allowed:
                raise Forbidden(f"policy denies {request.ACTION}: {decision.reason}")
            _log().info("priv.request", **fields)
            result, fd_sock = self._execute(request)
        except HiveError as e:
            ms = round((time.monotonic() - started) * 1000, 1)
            _log().warning("priv.result", ok=False, error=e.code, reason=e.reason, ms=ms, **fields)
            return encode_error(e), None
        except Exception as e:
            # A bug or an unexpected OS error: log it whole, answer without a
            # traceback, keep serving.
            _log().exception("priv.internal_error", **fields)
            return encode_error(HiveError(f"internal error: {type(e).__name__}")), None
        ms = round((time.monotonic() - started) * 1000, 1)
        _log().info("priv.result", ok=True, ms=ms, **fields)
        return encode_ok(result), fd_sock

    def _execute(self, request: PrivRequest) -> tuple[dict[str, Any], socket.socket | None]:
        b = self.backend
        match request:
            case ContainerCreate(agent=name, command=command):
                return b.create(name, command), None
            case ContainerStart(agent=name):
                return b.start(name), None
            case ContainerStop(agent=name):
                return b.stop(name), None
            case ContainerRestart(agent=name):
                return b.restart(name), None
            case ContainerDestroy(agent=name):
                return b.destroy(name), None
            case ContainerStatus():
                return {"containers": b.status_all()}, None
            case IsolationApply(agent=name):
                return b.apply_isolation(name), None
            case IsolationRemove(agent=name):
                return b.remove_isolation(name), None
            case SocketCreate(agent=name):
                sock = b.create_socket(name)
                return {"agent": name, "path": str(b.socket_path(name))}, sock
            case StateRead(agent=name, rel_path=rel_path):
                data = b.read_state(name, rel_path, self.max_state_bytes)
                return {
                    "agent": name,
                    "rel_path": rel_path,
                    "size": len(data),
                    "content_b64": base64.b64encode(data).decode(),
                }, None
        raise AssertionError(f"unhandled request {request!r}")  # pragma: no cover


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hive-boundary priv``."""
    parser.add_argument("--config", type=Path, help="hive.toml (default /etc/hive/hive.toml)")
    parser.add_argument(
        "--core-uid", type=int, help="uid served besides root (default: the core user's uid)"
    )
    parser.add_argument(
        "--core-gid", type=int, help="group of agents' state/ dirs (default: the core's group)"
    )
    parser.add_argument("--table", default="hive", help="the nftables table (inet) to own")
    parser.add_argument("--netns-prefix", default="hive-", help="namespace/veth name prefix")
    parser.add_argument("--ifprefix", default="hv-", help="host-side veth name prefix")
    parser.add_argument(
        "--agent-user-prefix", default="hive-a-", help="per-agent user names: PREFIX<agent>"
    )
    parser.add_argument(
        "--cgroup-parent",
        default="hive-agents",
        help="agents' control groups go in <hive-priv's own group>/NAME/<agent> "
        "(limits: [agents] in hive.toml)",
    )


def agent_limits(config: HiveConfig) -> Limits:
    """``[agents]`` as control-group limits (0 is unbounded)."""
    agents = config.agents
    return Limits(
        memory_bytes=agents.memory_max_bytes or None,
        cpu=agents.cpu_max or None,
        pids=agents.tasks_max or None,
    )


def _core_ids(config: HiveConfig, args: argparse.Namespace) -> tuple[int, int]:
    uid, gid = args.core_uid, args.core_gid
    if uid is None or gid is None:
        try:
            pw = pwd.getpwnam(config.core.user)
        except KeyError as e:
            raise PrivStartupError(
                f"core user {config.core.user!r} does not exist (run set-up, or pass --core-uid "
                "and --core-gid)"
            ) from e
        uid = pw.pw_uid if uid is None else uid
        gid = pw.pw_gid if gid is None else gid
    return int(uid), int(gid)


def _roles_of(engine: PolicyEngine, name: str) -> tuple[str, ...]:
    # The egress rules name agents or roles: hand the network layer every
    # subject the live policy gives this agent (itself and its roles).
    policy = engine.current
    principal = f"agent:{name}"
    if policy is None:
        return (principal,)
    return tuple(policy.index.graph.subjects_of(principal))


RECONCILE_SECONDS = 3.0
LOG_CHECK_SECONDS = 1.0
"""How often hive-priv checks its live table and containers' links against what they must be."""


def _same_network(network: NetworkPolicy) -> Callable[[Policy], None]:
    """Refuse to follow a version whose network section is not the one the table was built from."""

    def check(policy: Policy) -> None:
        if policy.network != network:
            raise PolicyError(
                "network.toml: the network section changed; hive-priv keeps the policy it "
                "runs until it is restarted and `hive-boundary netns reconcile` applies the "
                "new table (docs/operations.md)"
            )

    return check


def run(args: argparse.Namespace) -> int:
    """``hive-boundary priv``: serve until SIGTERM/SIGINT."""
    configure_logging()
    try:
        listener = take_activated_socket()
    except NotSocketActivated as e:
        print(f"hive-boundary priv: {e.reason}", file=sys.stderr)
        _log().error("priv.not_socket_activated", reason=e.reason)
        return 2
    try:
        config = load_config(args.config)
        core_uid, core_gid = _core_ids(config, args)
        engine = PolicyEngine(config.policy_dir)
        network = engine.current.network if engine.current is not None else None
        if network is None:
            raise PrivStartupError("no valid policy loaded: refusing to manage containers")
        from netns.manager import NetnsManager

        manager = NetnsManager(
            network,
            table=args.table,
            prefix=args.netns_prefix,
            ifprefix=args.ifprefix,
            state_path=config.run_dir / f"netns-{args.table}.json",
        )
        manager.ensure_table()
        limits = agent_limits(config)
        # Limits asked for and not enforceable here: refuse to run agents at all.
        cgroups = AgentCgroups.here(args.cgroup_parent, limits) if limits.bounded else None
        backend = NetnsBackend(
            state_dir=config.state_dir,
            run_dir=config.run_dir,
            isolation=manager,
            ui_port=network.agent_ui_port,
            core_gid=core_gid,
            roles_for=lambda name: _roles_of(engine, name),
            user_prefix=args.agent_user_prefix,
            cgroups=cgroups,
        )
        backend.recover()
    except HiveError as e:
        print(f"hive-boundary priv: {e.reason}", file=sys.stderr)
        _log().error("priv.startup_failed", reason=e.reason)
        return 2
    server = PrivServer(
        listener,
        backend,
        engine,
        allowed_uids=frozenset({0, core_uid}),
        max_state_bytes=config.core.max_state_file_bytes,
        follower=Follower(
            engine,
            config.run_dir,
            check=_same_network(network),
            keep={cls.ACTION for cls in REQUEST_TYPES.values()},
        ),
        reconcile=manager.reconcile,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    _log().info("priv.serving", core_uid=core_uid, table=args.table, pid=os.getpid())
    server.serve_forever()
    listener.close()
    _log().info("priv.stopped")
    return 0


def spawn_socket_activated(
    socket_path: Path,
    priv_args: Sequence[str] = (),
    *,
    group_gid: int,
    env: dict[str, str] | None = None,
    executable: Sequence[str] | None = None,
    stderr: Any = None,
    timeout: float = 10.0,
) -> subprocess.Popen[bytes]:
    """Development/demo launcher (as root): ``systemd-socket-activate`` + hive-priv.

    ``systemd-socket-activate`` binds ``socket_path`` and execs hive-priv with
    it as fd 3 on the first connection (same pid, so ``LISTEN_PID`` holds). It
    cannot set a socket's group or mode, so it runs under umask 0o077 (the
    socket appears as root-only 0600) and, as soon as the path exists, this
    launcher sets group ``group_gid`` and mode 0660 - the same result as
    ``SocketGroup=hive-core``/``SocketMode=0660`` in ``hive-priv.socket``,
    and never more open than that in between. hive-priv itself never binds.

    ``HIVE_*`` variables of ``env`` are forwarded with ``-E`` (the activator
    passes only a few variables to its child).
    """
    env = dict(os.environ if env is None else env)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    cmd = ["systemd-socket-activate", "-l", str(socket_path)]
    for key in sorted(env):
        if key.startswith(("HIVE_", "PYTHON")):
            cmd += ["-E", key]
    cmd += ["--", *(executable or [sys.executable, "-m", "enforcer.cli"]), "priv", *priv_args]
    proc = subprocess.Popen(cmd, env=env, umask=0o077, stdin=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise PrivStartupError(f"systemd-socket-activate did not bind {socket_path}")
        time.sleep(0.01)
    os.chown(socket_path, 0, group_gid, follow_symlinks=False)
    os.chmod(socket_path, 0o660, follow_symlinks=False)
    return proc
