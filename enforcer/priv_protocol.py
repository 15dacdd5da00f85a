"""The hive-priv wire protocol: typed requests, responses and their codecs. Pure.

Framing: one JSON object per line (``\\n``-terminated UTF-8) in each
direction over the unix stream socket ``priv.sock``; a request is at most
:data:`MAX_REQUEST_BYTES`. A response may carry one file descriptor as
``SCM_RIGHTS`` ancillary data on its first byte (``socket.create``).

Every request names its type in ``"request"``; the remaining keys must be
exactly that type's fields (unknown fields are refused, missing required
ones too, types are checked strictly: no bool for int, no coercion). Each
request type is bound to exactly one catalogue action of class ``system``
and supplies the resource that action's pattern describes, so hive-priv can
ask the policy ``(service:core, priv, resource, action)`` before acting.

Responses::

    {"ok": true, "result": {...}}
    {"ok": false, "error": "<code>", "reason": "<words>", "status": <4xx/5xx>}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar, get_args

from enforcer.confined import split_rel_path
from enforcer.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HiveError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from enforcer.names import AGENT_NAME_RE

__all__ = [
    "AGENT_NAME",
    "MAX_ARGV",
    "MAX_ARG_BYTES",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "REQUEST_TYPES",
    "ContainerCreate",
    "ContainerDestroy",
    "ContainerRestart",
    "ContainerStart",
    "ContainerStatus",
    "ContainerStop",
    "IsolationApply",
    "IsolationRemove",
    "PrivRequest",
    "ProtocolError",
    "SocketCreate",
    "StateRead",
    "UnknownRequest",
    "decode_request",
    "decode_response",
    "encode_error",
    "encode_ok",
    "encode_request",
    "error_from_response",
    "parse_status_result",
]

MAX_REQUEST_BYTES = 64 * 1024
# A state file of up to 4 MiB, base64-encoded, plus the envelope.
MAX_RESPONSE_BYTES = 8 << 20
MAX_ARGV = 64
MAX_ARG_BYTES = 4096

# The same grammar as the policy's principals (`agent:<name>`), short enough
# that `hive-a-<name>` is a valid system user name (32 bytes).
AGENT_NAME = AGENT_NAME_RE


class ProtocolError(BadRequest):
    """A request that does not parse or does not match its schema."""

    code = "bad_request"


class UnknownRequest(ProtocolError):
    """A request type hive-priv does not serve."""

    code = "unknown_request"


def _agent(value: object) -> str:
    if not isinstance(value, str) or not AGENT_NAME.fullmatch(value):
        raise ProtocolError("agent must match [a-z][a-z0-9-]{0,24}")
    return value


@dataclass(frozen=True, slots=True)
class _Base:
    """What every request has: its type, its catalogue action, its resource pattern."""

    TYPE: ClassVar[str] = ""
    ACTION: ClassVar[str] = ""
    RESOURCE: ClassVar[str] = ""

    def resource(self) -> str:
        """The policy resource this request acts on."""
        return self.RESOURCE

    def validate(self) -> None:
        """Check field values beyond their JSON types; raise :class:`ProtocolError`."""

    def to_json(self) -> dict[str, Any]:
        """The wire form (``request`` plus the fields)."""
        out: dict[str, Any] = {"request": self.TYPE}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class _AgentRequest(_Base):
    """A request about one agent's container."""

    RESOURCE: ClassVar[str] = "agent:{name}/container"

    agent: str

    def resource(self) -> str:
        """The policy resource this request acts on."""
        return self.RESOURCE.format(name=self.agent)

    def validate(self) -> None:
        """Check field values beyond their JSON types; raise :class:`ProtocolError`."""
        _agent(self.agent)


@dataclass(frozen=True, slots=True)
class ContainerCreate(_AgentRequest):
    """Create a container: per-agent user, directories, isolated network; not started.

    ``command`` is the agent program (argv) the container runs when started;
    it runs as the agent's own uid inside the agent's namespace.
    """

    TYPE: ClassVar[str] = "container.create"
    ACTION: ClassVar[str] = "priv.container.create"
    command: tuple[str, ...]

    def validate(self) -> None:
        """Agent name, and a bounded argv with no NULs."""
        _agent(self.agent)
        if not self.command or len(self.command) > MAX_ARGV:
            raise ProtocolError(f"command must have 1-{MAX_ARGV} arguments")
        for arg in self.command:
            if "\x00" in arg or len(arg.encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES:
                raise ProtocolError(f"command arguments must be NUL-free, <= {MAX_ARG_BYTES}B")
        if not self.command[0].startswith("/"):
            raise ProtocolError("command[0] must be an absolute path")


@dataclass(frozen=True, slots=True)
class ContainerStart(_AgentRequest):
    """Start the agent process (isolation is applied first if missing)."""

    TYPE: ClassVar[str] = "container.start"
    ACTION: ClassVar[str] = "priv.container.start"


@dataclass(frozen=True, slots=True)
class ContainerStop(_AgentRequest):
    """Stop the agent process (SIGTERM, then SIGKILL) and reap it."""

    TYPE: ClassVar[str] = "container.stop"
    ACTION: ClassVar[str] = "priv.container.stop"


@dataclass(frozen=True, slots=True)
class ContainerRestart(_AgentRequest):
    """Stop then start."""

    TYPE: ClassVar[str] = "container.restart"
    ACTION: ClassVar[str] = "priv.container.restart"


@dataclass(frozen=True, slots=True)
class ContainerDestroy(_AgentRequest):
    """Remove everything the container made: process, network, socket, directories."""

    TYPE: ClassVar[str] = "container.destroy"
    ACTION: ClassVar[str] = "priv.container.destroy"


@dataclass(frozen=True, slots=True)
class ContainerStatus(_Base):
    """The status of every container hive-priv knows, in one answer.

    One request for all containers rather than one per agent: the core polls
    it every second or two, so its cost (one connection, one policy decision,
    one log record) stays the same however many agents there are, and the
    answer is one consistent snapshot. It has no fields; the resource is the
    collection ``agents``. Result: ``{"containers": {name: status, ...}}``
    (see :func:`parse_status_result`).
    """

    TYPE: ClassVar[str] = "container.status"
    ACTION: ClassVar[str] = "priv.container.status"
    RESOURCE: ClassVar[str] = "agents"


@dataclass(frozen=True, slots=True)
class IsolationApply(_AgentRequest):
    """Bring up (or confirm) the container's namespace, veth and table elements."""

    TYPE: ClassVar[str] = "isolation.apply"
    ACTION: ClassVar[str] = "priv.isolation.apply"
    RESOURCE: ClassVar[str] = "agent:{name}/network"


@dataclass(frozen=True, slots=True)
class IsolationRemove(_AgentRequest):
    """Tear down the container's network; refused while its process runs."""

    TYPE: ClassVar[str] = "isolation.remove"
    ACTION: ClassVar[str] = "priv.isolation.remove"
    RESOURCE: ClassVar[str] = "agent:{name}/network"


@dataclass(frozen=True, slots=True)
class SocketCreate(_AgentRequest):
    """Create ``RUN/agents/<agent>.sock`` (owner: the agent's uid, 0600), pass the fd."""

    TYPE: ClassVar[str] = "socket.create"
    ACTION: ClassVar[str] = "priv.socket.create"
    RESOURCE: ClassVar[str] = "agent:{name}/socket"


@dataclass(frozen=True, slots=True)
class StateRead(_AgentRequest):
    """``ReadAgentStateFile{agent, rel_path}``: confined beneath the agent's ``state/``."""

    TYPE: ClassVar[str] = "state.read"
    ACTION: ClassVar[str] = "priv.state.read"
    RESOURCE: ClassVar[str] = "agent:{name}/state/{path}"
    rel_path: str

    def resource(self) -> str:
        """``agent:<name>/state/<rel_path>``."""
        return self.RESOURCE.format(name=self.agent, path=self.rel_path)

    def validate(self) -> None:
        """Agent name and a path that passes :func:`split_rel_path`."""
        _agent(self.agent)
        try:
            split_rel_path(self.rel_path)
        except BadRequest as e:
            raise ProtocolError(e.reason) from e


PrivRequest = (
    ContainerCreate
    | ContainerStart
    | ContainerStop
    | ContainerRestart
    | ContainerDestroy
    | ContainerStatus
    | IsolationApply
    | IsolationRemove
    | SocketCreate
    | StateRead
)

# Every request type, by its wire name: the members of PrivRequest, listed once.
REQUEST_TYPES: dict[str, type[_Base]] = {cls.TYPE: cls for cls in get_args(PrivRequest)}


def _check_type(name: str, value: object, annotation: object) -> object:
    if annotation in {"str", str}:
        if not isinstance(value, str):
            raise ProtocolError(f"{name} must be a string")
        return value
    if annotation in {"tuple[str, ...]"}:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(f"{name} must be a list of strings")
        return tuple(value)
    raise AssertionError(f"unsupported field type {annotation!r}")  # pragma: no cover


def decode_request(line: bytes) -> PrivRequest:
    """Parse one request line; raise :class:`ProtocolError` / :class:`UnknownRequest`."""
    if len(line) > MAX_REQUEST_BYTES:
        raise PayloadTooLarge(f"request longer than {MAX_REQUEST_BYTES} bytes")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:
        # ValueError, not only JSONDecodeError: an integer literal over
        # Python's digit limit raises a bare ValueError (and UnicodeDecodeError
        # is one too) - a bad request, never an internal error.
        raise ProtocolError("request is not valid JSON") from e
    if not isinstance(data, dict):
        raise ProtocolError("request must be a JSON object")
    kind = data.pop("request", None)
    if not isinstance(kind, str):
        raise ProtocolError('request must name its type in "request"')
    cls = REQUEST_TYPES.get(kind)
    if cls is None:
        raise UnknownRequest(f"unknown request {kind[:64]!r}")
    expected = {f.name: f.type for f in fields(cls)}
    unknown = sorted(set(data) - set(expected))
    if unknown:
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(u[:64] for u in unknown)}")
    missing = sorted(set(expected) - set(data))
    if missing:
        raise ProtocolError(f"{kind}: missing field(s) {', '.join(missing)}")
    values: dict[str, Any] = {
        name: _check_type(name, data[name], ann) for name, ann in expected.items()
    }
    request = cls(**values)
    request.validate()
    return request  # type: ignore[return-value]


def encode_request(request: PrivRequest) -> bytes:
    """One request line."""
    return json.dumps(request.to_json(), separators=(",", ":")).encode() + b"\n"


def encode_ok(result: dict[str, Any]) -> bytes:
    """A success response line."""
    return json.dumps({"ok": True, "result": result}, separators=(",", ":")).encode() + b"\n"


def encode_error(error: HiveError) -> bytes:
    """An error response line: code, reason, status; never a traceback."""
    body = {"ok": False, "status": error.status, **error.to_json()}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode_response(line: bytes) -> dict[str, Any]:
    """Parse a response line; return ``result`` or raise the error it carries."""
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Unavailable("hive-priv sent an unreadable response") from e
    if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
        raise Unavailable("hive-priv sent a malformed response")
    if data["ok"]:
        result = data.get("result")
        if not isinstance(result, dict):
            raise Unavailable("hive-priv sent a malformed result")
        return result
    raise error_from_response(data)


_BY_STATUS: dict[int, type[HiveError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    503: Unavailable,
}


def error_from_response(data: dict[str, Any]) -> HiveError:
    """Rebuild a :class:`HiveError` of the right status from an error response."""
    status = data.get("status")
    cls = _BY_STATUS.get(status, HiveError) if isinstance(status, int) else HiveError
    err = cls(str(data.get("reason", "hive-priv error")))
    code = data.get("error")
    if isinstance(code, str):
        err.code = code
    return err


def parse_status_result(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``containers`` map of a ``container.status`` result, checked.

    Every key must be an agent name and every value a status object whose
    ``agent`` is that name and whose ``state`` is a string; anything else is
    hive-priv misbehaving (:class:`Unavailable`), never a half-read answer.
    """
    containers = result.get("containers")
    if not isinstance(containers, dict):
        raise Unavailable("hive-priv sent a status result without containers")
    out: dict[str, dict[str, Any]] = {}
    for name, info in containers.items():
        if (
            not isinstance(name, str)
            or not AGENT_NAME.fullmatch(name)
            or not isinstance(info, dict)
            or info.get("agent") != name
            or not isinstance(info.get("state"), str)
        ):
            raise Unavailable(f"hive-priv sent a malformed status for {str(name)[:64]!r}")
        out[name] = info
    return out
