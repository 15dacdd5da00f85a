"""Configuration, parsed once into frozen dataclasses.

One TOML file (``/etc/hive/hive.toml`` by default, ``--config`` or
``HIVE_CONFIG`` to override) configures every daemon; each reads its own
section. Tests build :class:`HiveConfig` directly with temporary directories.

Example::

    run_dir = "/run/hive"          # core.sock, priv.sock, agents/<name>.sock
    state_dir = "/var/lib/hive"    # hive.db, gateway/operator-token, agents/<name>/{state,harness}
    policy_dir = "/etc/hive/policies"

    [core]
    user = "hive-core"
    backend = "priv"               # "local" (dev: child processes) | "priv" (hive-priv containers)

    [gateway]
    listen = "127.0.0.1:8080"
    user = "hive-gateway"
    workers = 2                    # processes sharing the port (default: one per CPU)

    [agents]                       # each agent's control group (hive-priv); 0 = unbounded
    memory_max_bytes = 1073741824  # memory of all its processes together (1 GiB)
    cpu_max = 1.0                  # CPUs' worth of time
    tasks_max = 512                # processes and threads
"""

from __future__ import annotations

import os
import pwd
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from enforcer.errors import BadRequest

__all__ = [
    "CORE_BACKENDS",
    "DEFAULT_CONFIG_PATH",
    "AgentsConfig",
    "ConfigError",
    "CoreConfig",
    "GatewayConfig",
    "HiveConfig",
    "default_policy_dir",
    "load_config",
    "parse_listen",
]

DEFAULT_CONFIG_PATH = Path("/etc/hive/hive.toml")
CORE_BACKENDS = ("local", "priv")


class ConfigError(BadRequest):
    """The configuration file is unreadable or invalid (names file and key)."""

    code = "bad_config"


def default_policy_dir() -> Path:
    """The policy shipped with the package (``policies/``)."""
    import policies

    return Path(policies.__file__).resolve().parent


_DAY = 24 * 3600
_GIB = 1 << 30
_MIB_16 = 16 << 20
_MIN_TASKS = 16

# Inclusive ranges of the numeric settings (a value outside is refused with
# its range: a typo such as a negative size or a zero timeout would otherwise
# surface as a strange failure much later). Wide on purpose; tests use small values.
_CORE_BOUNDS: dict[str, tuple[float, float]] = {
    "gateway_uid": (0, 2**32 - 2),
    "max_body_bytes": (1, _GIB),
    "max_state_file_bytes": (1, _GIB),
    "max_state_bytes_per_agent": (1, 1 << 44),
    "max_state_entries_per_agent": (1, 10_000_000),
    "max_journal_rows_per_agent": (1, 10_000_000),
    "max_journal_bytes_per_agent": (1, 1 << 40),
    "long_poll_max_seconds": (0.001, 3600),
    "agent_io_timeout": (0.001, 3600),
}
_GATEWAY_BOUNDS: dict[str, tuple[float, float]] = {
    "port": (1, 65535),
    "session_ttl_seconds": (1, 90 * _DAY),
    "connect_timeout": (0.001, 3600),
    "idle_timeout": (0.001, 3600),
    "workers": (1, 64),
    "max_connections": (1, 1_000_000),
    "header_timeout": (0.001, 3600),
    "keepalive_timeout": (0.001, 24 * 3600),
}
_AGENTS_BOUNDS: dict[str, tuple[float, float]] = {
    "memory_max_bytes": (0, 1 << 50),
    "cpu_max": (0.0, 4096.0),
    "tasks_max": (0, 4_000_000),
}


def _check_bounds(section: str, config: Any, bounds: dict[str, tuple[float, float]]) -> None:
    """Refuse a numeric setting of ``config`` outside its range (or not a number at all)."""
    for key, (low, high) in bounds.items():
        value = getattr(config, key, None)
        if value is None and key == "gateway_uid":
            continue  # resolved from the gateway's user at start-up
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"[{section}] {key} must be {_range(key, low, high)}, got {value!r}")


def _range(key: str, low: float, high: float) -> str:
    if isinstance(low, int) and isinstance(high, int):
        return f"an integer from {low} to {high}"
    unit = " of seconds" if key.endswith(("timeout", "seconds")) else ""
    return f"a number{unit} from {low:g} to {high:g}"


def _check_text(section: str, config: Any, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(config, key)
        if not isinstance(value, str) or not value or not value.isprintable():
            raise ConfigError(f"[{section}] {key} must be a non-empty string, got {value!r}")


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The core daemon's settings."""

    user: str = "hive-core"
    # Who runs agents and binds their sockets: "local" (the core itself, child
    # processes; development) or "priv" (hive-priv containers over priv.sock).
    backend: str = "local"
    # uid allowed to present the operator marker on core.sock (the gateway's);
    # None means "the uid of `GatewayConfig.user`", resolved at start-up.
    gateway_uid: int | None = None
    max_body_bytes: int = 1 << 20
    max_state_file_bytes: int = 4 << 20
    # One agent's whole state/ (bytes and entries): one agent cannot fill the
    # disk that holds hive.db and every other agent's state.
    max_state_bytes_per_agent: int = 256 << 20
    max_state_entries_per_agent: int = 10000
    # Retention of one agent's messages and of its journal lines (each table
    # apart): past either bound its oldest are pruned in the write's own
    # transaction, so one agent cannot grow hive.db without bound.
    max_journal_rows_per_agent: int = 10000
    max_journal_bytes_per_agent: int = 8 << 20
    long_poll_max_seconds: float = 60.0
    # How long an agent may take to send a request body, or to take a state
    # file's answer, before its connection is closed: a stalled one pinned
    # up to 4 MiB of the core's memory for as long as it liked.
    agent_io_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in CORE_BACKENDS:
            raise ConfigError(
                f"[core] backend must be one of {', '.join(CORE_BACKENDS)}, got {self.backend!r}"
            )
        _check_text("core", self, ("user",))
        _check_bounds("core", self, _CORE_BOUNDS)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The gateway's settings."""

    host: str = "127.0.0.1"
    port: int = 8080
    user: str = "hive-gateway"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    session_ttl_seconds: int = 8 * 3600
    connect_timeout: float = 3.0
    idle_timeout: float = 30.0
    # Per worker: connections held open at once (more are closed at once), how
    # long a new connection may take to deliver its first request head, and how
    # long a kept-alive one may wait for (or half-send) its next (docs/operations.md).
    max_connections: int = 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    # Worker processes sharing the listening port (sessions are self-verifying,
    # so any worker serves any request): one per CPU unless set.
    workers: int = field(default_factory=lambda: min(64, max(1, len(os.sched_getaffinity(0)))))

    def __post_init__(self) -> None:
        _check_text("gateway", self, ("host", "user"))
        _check_bounds("gateway", self, _GATEWAY_BOUNDS)
        if (self.tls_cert is None) != (self.tls_key is None):
            # One without the other would serve plain HTTP under an https origin
            # (and a cookie not marked Secure).
            raise ConfigError("[gateway] tls_cert and tls_key go together: set both or neither")

    @property
    def origin(self) -> str:
        """The one origin the operator's browser uses, as the browser writes it.

        ``scheme://host[:port]``: an IPv6 host in brackets, the port left out
        when it is the scheme's default (browsers send ``Origin`` so, and the
        gateway compares it exactly).
        """
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if scheme == "https" else 80
        return f"{scheme}://{host}" if self.port == default else f"{scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AgentsConfig:
    """What each agent may use, enforced by hive-priv with a control group per agent.

    0 leaves that resource unbounded. The defaults leave the host room: one
    agent cannot take all memory, every CPU or the process table.
    """

    memory_max_bytes: int = _GIB
    cpu_max: float = 1.0
    tasks_max: int = 512

    def __post_init__(self) -> None:
        _check_bounds("agents", self, _AGENTS_BOUNDS)
        if 0 < self.memory_max_bytes < _MIB_16:
            # Smaller starts no interpreter; refuse it here, not as an OOM kill later.
            raise ConfigError(
                f"[agents] memory_max_bytes must be 0 (unbounded) or at least {_MIB_16}, "
                f"got {self.memory_max_bytes}"
            )
        if 0 < self.tasks_max < _MIN_TASKS:
            # The agent, its interpreter's threads and (cgroup v2) hive-priv's own
            # threads for the instant of the spawn: fewer would refuse the start.
            raise ConfigError(
                f"[agents] tasks_max must be 0 (unbounded) or at least {_MIN_TASKS}, "
                f"got {self.tasks_max}"
            )
        if 0 < self.cpu_max < 0.01:
            raise ConfigError(
                f"[agents] cpu_max must be 0 (unbounded) or at least 0.01, got {self.cpu_max}"
            )


@dataclass(frozen=True, slots=True)
class HiveConfig:
    """Everything the daemons share: where files live and the per-daemon sections."""

    run_dir: Path = Path("/run/hive")
    state_dir: Path = Path("/var/lib/hive")
    policy_dir: Path = field(default_factory=default_policy_dir)
    core: CoreConfig = field(default_factory=CoreConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)

    @property
    def core_socket(self) -> Path:
        """The core's operator socket, reached only by the gateway."""
        return self.run_dir / "core.sock"

    @property
    def priv_socket(self) -> Path:
        """hive-priv's socket (socket-activated, group hive-core, 0660)."""
        return self.run_dir / "priv.sock"

    @property
    def agent_socket_dir(self) -> Path:
        """Directory holding one ``<name>.sock`` per agent."""
        return self.run_dir / "agents"

    def agent_socket(self, name: str) -> Path:
        """Agent ``name``'s own socket."""
        return self.agent_socket_dir / f"{name}.sock"

    @property
    def database(self) -> Path:
        """The core's SQLite database (WAL)."""
        return self.state_dir / "hive.db"

    @property
    def operator_token_file(self) -> Path:
        """The operator login token (mode 0600), generated at the gateway's first start.

        In the gateway's own directory (``STATE/gateway``, 0700), which it may
        write under its unit (``StateDirectory=hive/gateway``)."""
        return self.state_dir / "gateway" / "operator-token"

    def agent_dir(self, name: str) -> Path:
        """Agent ``name``'s directory: ``state/`` (agent-visible), ``harness/`` (not)."""
        return self.state_dir / "agents" / name

    def resolved_gateway_uid(self) -> int:
        """The uid whose connections to core.sock may carry the operator marker."""
        if self.core.gateway_uid is not None:
            return self.core.gateway_uid
        try:
            return pwd.getpwnam(self.gateway.user).pw_uid
        except KeyError as e:
            raise ConfigError(
                f"gateway user {self.gateway.user!r} does not exist; "
                "set core.gateway_uid or create the user (make demo does)"
            ) from e


def _section(data: dict[str, Any], key: str, source: Path) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{key}] must be a table")
    return value


def _build(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    known = cls.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    converted = {
        key: _convert(key, value, str(known[key].type), where) for key, value in values.items()
    }
    try:
        return replace(cls(), **converted)
    except ConfigError as e:  # a range or combination check: say which file
        raise ConfigError(f"{where.split(' [')[0]}: {e.reason}") from e


def _path(key: str, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(f"{where}: {key} must be an absolute path, got {value!r}")
    return Path(value)


def _convert(key: str, value: object, annotation: str, where: str) -> object:
    """``value`` as the field's declared type (int, float, str, absolute Path), or refused."""
    kind = annotation.removesuffix(" | None")
    if kind == "Path":
        return _path(key, value, where)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number, got {type(value).__name__}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {type(value).__name__}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {type(value).__name__}")
    return value


def parse_listen(value: object) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) as (host, port); :class:`ConfigError` if not."""
    text = value if isinstance(value, str) else ""
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if "[" in host or "]" in host or (":" in host) != bracketed:
        host = ""  # brackets around an IPv6 address, and only there
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise ConfigError(f"must be HOST:PORT ([ADDRESS]:PORT for IPv6), got {value!r}")
    return host, int(port)


def load_config(path: Path | None = None) -> HiveConfig:
    """Parse the configuration file; a missing default file means all defaults.

    ``HIVE_RUN_DIR`` / ``HIVE_STATE_DIR`` / ``HIVE_POLICY_DIR`` override the
    file (useful for development against a temporary directory).
    """
    explicit = path is not None or "HIVE_CONFIG" in os.environ
    source = path or Path(os.environ.get("HIVE_CONFIG", DEFAULT_CONFIG_PATH))
    data: dict[str, Any] = {}
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        if explicit:
            raise ConfigError(f"{source}: no such configuration file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from e
    except RecursionError as e:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from e
    except ValueError as e:  # an integer past Python's digit limit
        raise ConfigError(f"{source}: invalid TOML: {e}") from e
    top = {k: v for k, v in data.items() if k not in {"core", "gateway", "agents"}}
    config: HiveConfig = _build(HiveConfig, top, str(source))
    core = _build(CoreConfig, _section(data, "core", source), f"{source} [core]")
    gw = _section(data, "gateway", source)
    if "listen" in gw:
        try:
            gw["host"], gw["port"] = parse_listen(gw.pop("listen"))
        except ConfigError as e:
            raise ConfigError(f"{source} [gateway]: listen {e.reason}") from e
    gateway = _build(GatewayConfig, gw, f"{source} [gateway]")
    agents = _build(AgentsConfig, _section(data, "agents", source), f"{source} [agents]")
    env = {
        "run_dir": os.environ.get("HIVE_RUN_DIR"),
        "state_dir": os.environ.get("HIVE_STATE_DIR"),
        "policy_dir": os.environ.get("HIVE_POLICY_DIR"),
    }
    overrides = {k: _path(k, v, f"${'HIVE_' + k.upper()}") for k, v in env.items() if v}
    return replace(config, core=core, gateway=gateway, agents=agents, **overrides)
