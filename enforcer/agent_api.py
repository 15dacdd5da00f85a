"""The agent surface: JSON over the agent's own socket, under ``/v1/``.

Built only from ``agent-self`` actions (``check_routes(..., channel="socket")``
refuses anything else at start-up), and every handler acts on the requesting
agent's own rows and files only: the agent's name comes from the principal the
transport established, never from the request, and every lookup by id is
scoped to that agent (another agent's question id is simply "not found").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from enforcer import authz
from enforcer.bodies import Field, Schema, check_identity_encoding, parse_body, parse_query
from enforcer.confined import (
    open_dir_confined,
    open_root_dir,
    read_confined,
    split_rel_path,
    write_confined,
)
from enforcer.corestate import CORE, CoreState
from enforcer.errors import BadRequest, Forbidden, HiveError, NotFound, PayloadTooLarge
from enforcer.openapi import ApiRoute
from enforcer.transport import AgentBinding, AgentPrincipal, agent_principal

__all__ = [
    "ID_PATTERN",
    "ROUTES",
    "STATE_PATH_PATTERN",
    "TITLE",
    "create_agent_app",
    "list_state",
    "parse_id",
    "read_state",
    "write_state",
]

TITLE = "hive-boundary agent API"
ID_PATTERN = r"[0-9]{1,12}"
# The state paths the OpenAPI documents promise (the check itself is
# confined.split_rel_path plus the raw-path check; this is a safe subset).
_SEG = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,254}"
STATE_PATH_PATTERN = rf"{_SEG}(/{_SEG}){{0,31}}"
_ID = re.compile(ID_PATTERN)
MAX_LISTED = 1000


def parse_id(text: str, what: str) -> int:
    """A positive decimal id (at most 12 digits), else :class:`BadRequest`."""
    if _ID.fullmatch(text) is None:
        raise BadRequest(f"bad {what} id")
    return int(text)


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _me(request: web.Request) -> str:
    principal = request[authz.PRINCIPAL]
    if not principal.startswith("agent:"):
        raise Forbidden("not an agent principal")
    return principal[len("agent:") :]


def _core(request: web.Request) -> CoreState:
    return request.app[CORE]


def _rel_path(request: web.Request) -> str:
    rel = request.match_info.get("path", "")
    split_rel_path(rel)
    return rel


# --- state files (confined beneath STATE/agents/<name>/state/) ------------------


def read_state(state_dir: Path, rel: str, max_bytes: int) -> bytes:
    """Read ``rel`` confined beneath ``state_dir`` (no symlinks, no escape)."""
    split_rel_path(rel)
    with _closing(open_root_dir(state_dir)) as root:
        return read_confined(root, rel, max_bytes)


def write_state(state_dir: Path, rel: str, data: bytes, max_bytes: int) -> None:
    """Atomically write ``rel`` beneath ``state_dir`` (parents made, symlinks refused)."""
    split_rel_path(rel)
    with _closing(open_root_dir(state_dir)) as root:
        write_confined(root, rel, data, max_bytes=max_bytes, make_parents=True, mode=0o600)


def state_usage(
    state_dir: Path, target: str = "", *, max_entries: int | None = None
) -> tuple[int, int, int | None]:
    """(entries, bytes, size of the file ``target`` or None) of ``state_dir``, no symlink followed.

    Walked with an explicit stack: an agent's tree may be nested any depth.
    With ``max_entries`` the walk stops once it has counted more than that
    (the quota is exceeded whatever else there is): an agent that made
    200 000 files itself made every walk, and every other agent's writes
    behind it in the thread pool, slow (found by an attack review).
    """
    entries = total = 0
    found: int | None = None
    stack: list[tuple[Path, str]] = [(state_dir, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            it = os.scandir(directory)
        except OSError:
            continue
        with it:
            for entry in it:
                entries += 1
                if max_entries is not None and entries > max_entries:
                    return entries, total, found
                rel = f"{prefix}{entry.name}"
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
                    if rel == target:
                        found = st.st_size
                elif stat.S_ISDIR(st.st_mode):
                    stack.append((Path(entry.path), f"{rel}/"))
    return entries, total, found


def list_state(state_dir: Path) -> list[dict[str, Any]]:
    """Regular files beneath ``state_dir`` (path, size, mtime); symlinks are not followed."""
    out: list[dict[str, Any]] = []
    try:
        root = open_root_dir(state_dir)
    except NotFound:
        return out

    def walk(fd: int, prefix: tuple[str, ...]) -> None:
        for name in sorted(os.listdir(fd)):
            if len(out) >= MAX_LISTED:
                return
            if name.startswith(".") and name.endswith(".tmp"):
                continue  # an atomic write in flight
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(
                    {"path": "/".join((*prefix, name)), "size": st.st_size, "mtime": st.st_mtime}
                )
            elif stat.S_ISDIR(st.st_mode) and len(prefix) < 16:
                with (
                    contextlib.suppress(Exception),
                    _closing(open_dir_confined(fd, (name,))) as sub,
                ):
                    walk(sub, (*prefix, name))

    with _closing(root):
        walk(root, ())
    return out


def _state_dir(core: CoreState, name: str) -> Path:
    return core.config.agent_dir(name) / "state"


# --- handlers ---------------------------------------------------------------------

_WAIT = Schema({"wait": Field("number", required=False, minimum=0, maximum=3600)})


class BodyStalled(HiveError):
    """The agent stopped sending its request body, or taking its answer (connection closed)."""

    status = 408
    code = "request_timeout"


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes (413 past it, refused as soon as known).

    Within ``[core] agent_io_timeout``, else the connection is closed: a body
    that stops coming held up to its limit of the core's memory for as long
    as the agent liked, and a JSON body was read whole (up to the largest
    limit of any route, 4 MiB) before its own limit (1 MiB) was checked
    (both found by attack reviews).
    """
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes")  # before reading any of it
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(_core(request).config.core.agent_io_timeout):
            while chunk := await request.content.read(1 << 16):
                size += len(chunk)
                if size > limit:  # chunked: known only as it comes
                    raise PayloadTooLarge(f"body larger than {limit} bytes")
                chunks.append(chunk)
    except TimeoutError as e:
        if request.transport is not None:
            request.transport.abort()
        raise BodyStalled("the request body stopped arriving") from e
    return b"".join(chunks)


async def _json(request: web.Request, schema: Schema) -> dict[str, Any]:
    core = _core(request)
    check_identity_encoding(request.headers.get("Content-Encoding"))
    limit = core.config.core.max_body_bytes
    # One of the agent's few transfer slots while the body is in memory: 64
    # connections of one agent each sending most of a body pinned 266 MiB.
    async with core.transfer_slot(_me(request)):
        raw = await _read_body(request, limit)
    _still_registered(request)
    return parse_body(raw, schema, max_bytes=limit)


def _still_registered(request: web.Request) -> None:
    """Refuse a request whose agent was removed (or replaced) while its body was coming.

    The principal was checked before the handler ran, but reading a body takes
    as long as the client likes: an agent destroyed meanwhile - and perhaps a
    new agent registered under the same name - must not get a write in under
    that name. Called right after the body is read; the write that follows
    does not wait on anything, so nothing can change in between.
    """
    principal = request[authz.PRINCIPAL]
    binding = principal.binding if isinstance(principal, AgentPrincipal) else None
    if binding is None or _core(request).registry.agent(binding.name) is not binding:
        raise Forbidden("this agent was removed while the request was being sent")


def _wait_seconds(request: web.Request) -> float:
    query = parse_query(request.query, _WAIT)
    wait = float(query.get("wait", 0.0))
    return min(wait, _core(request).config.core.long_poll_max_seconds)


async def whoami(request: web.Request) -> web.Response:
    """Which agent this socket speaks for."""
    principal = request[authz.PRINCIPAL]
    cached = _WHOAMI_BODIES.get(principal)
    # The body is a constant per binding (agent, uid), rendered once. The
    # transport admitted this request under principal.binding, found live with
    # SO_PEERCRED matching its uid: no registry or store read per request.
    if (
        cached is None
        or not isinstance(principal, AgentPrincipal)
        or cached[0] is not principal.binding
    ):
        cached = _whoami_body(request)
    return web.Response(body=cached[1], content_type="application/json", charset="utf-8")


def _whoami_body(request: web.Request) -> tuple[AgentBinding, bytes]:
    principal = request[authz.PRINCIPAL]
    me = _me(request)
    binding = _core(request).registry.agent(me)
    if binding is None:
        raise NotFound(f"no agent {me!r}")
    if len(_WHOAMI_BODIES) >= 4096:
        _WHOAMI_BODIES.clear()
    body = json.dumps({"agent": me, "principal": f"agent:{me}", "uid": binding.uid}).encode()
    cached = _WHOAMI_BODIES[principal] = (binding, body)
    return cached


_WHOAMI_BODIES: dict[str, tuple[AgentBinding, bytes]] = {}


_ASK = Schema(
    {
        "text": Field("str", min_len=1, max_len=4000, description="the question"),
        "options": Field("str_list", required=False, max_len=200, max_items=16),
    }
)


async def ask(request: web.Request) -> web.Response:
    """Ask the operator a question; 201 with the question (status ``open``)."""
    me = _me(request)
    body = await _json(request, _ASK)
    core = _core(request)
    record = core.db.ask(me, body["text"], tuple(body.get("options", ())))
    core.events.publish("question.asked", agent=me, id=record.id)
    return web.json_response(record.to_json(), status=201)


async def _poll(request: web.Request, fetch: Any, done: Any) -> web.Response:
    core = _core(request)
    deadline = time.monotonic() + _wait_seconds(request)
    while True:
        record = fetch()
        remaining = deadline - time.monotonic()
        if done(record) or remaining <= 0 or core.events.closed:
            return web.json_response(record.to_json())
        await core.events.wait(remaining)


async def wait_question(request: web.Request) -> web.Response:
    """The agent's own question; with ``?wait=S``, wait up to S seconds for the answer."""
    me = _me(request)
    qid = parse_id(request.match_info["id"], "question")
    store = _core(request).db
    return await _poll(
        request, lambda: store.question(qid, agent=me), lambda r: r.answer is not None
    )


_APPROVAL = Schema(
    {
        "action": Field("str", min_len=1, max_len=200, description="what the agent wants to do"),
        "detail": Field("str", required=False, max_len=4000),
    }
)


async def request_approval(request: web.Request) -> web.Response:
    """Ask the operator to approve something; 201 with the request (status ``pending``)."""
    me = _me(request)
    body = await _json(request, _APPROVAL)
    core = _core(request)
    record = core.db.request_approval(me, body["action"], body.get("detail", ""))
    core.events.publish("approval.requested", agent=me, id=record.id)
    return web.json_response(record.to_json(), status=201)


async def wait_approval(request: web.Request) -> web.Response:
    """The agent's own approval request; with ``?wait=S``, wait for the decision."""
    me = _me(request)
    aid = parse_id(request.match_info["id"], "approval")
    store = _core(request).db
    return await _poll(
        request, lambda: store.approval(aid, agent=me), lambda r: r.decision is not None
    )


_MESSAGE = Schema({"text": Field("str", min_len=1, max_len=8000)})


async def send_message(request: web.Request) -> web.Response:
    """Send the operator a message; 201."""
    me = _me(request)
    body = await _json(request, _MESSAGE)
    core = _core(request)
    record = core.db.add_message(me, body["text"])
    core.events.publish("message", agent=me, id=record.id)
    return web.json_response(record.to_json(), status=201)


_STATUS = Schema(
    {
        "state": Field("str", min_len=1, max_len=64, pattern=r"[a-z][a-z0-9_.-]*"),
        "detail": Field("str", required=False, max_len=2000),
    }
)


async def report_status(request: web.Request) -> web.Response:
    """Report one's own status (``state`` word + optional detail)."""
    me = _me(request)
    body = await _json(request, _STATUS)
    core = _core(request)
    record = core.db.set_status(me, body["state"], body.get("detail", ""))
    core.events.publish("status", agent=me, status=record.status)
    return web.json_response({"agent": me, "status": record.status, "detail": record.status_detail})


async def state_list(request: web.Request) -> web.Response:
    """Every file under one's own ``state/``."""
    me = _me(request)
    files = await asyncio.to_thread(list_state, _state_dir(_core(request), me))
    return web.json_response({"files": files})


async def state_read(request: web.Request) -> web.StreamResponse:
    """One file of one's own ``state/`` (bytes)."""
    me = _me(request)
    core = _core(request)
    rel = _rel_path(request)
    async with core.transfer_slot(me):
        data = read_state(_state_dir(core, me), rel, core.config.core.max_state_file_bytes)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(data)
        await response.prepare(request)
        try:
            # An agent that never takes its answer held the file in the core's
            # memory for as long as it liked (found by an attack review).
            async with asyncio.timeout(core.config.core.agent_io_timeout):
                await response.write(data)
                await response.write_eof()
        except TimeoutError:
            # abort, not close: close would still send (and so keep) what is buffered.
            if request.transport is not None:
                request.transport.abort()
        return response


def _within_quota(core: CoreState, state_dir: Path, rel: str, size: int) -> None:
    """Refuse a write that would take ``state_dir`` past the agent's quota (413)."""
    limits = core.config.core
    entries, total, replaced = state_usage(
        state_dir, rel, max_entries=limits.max_state_entries_per_agent
    )
    if total - (replaced or 0) + size > limits.max_state_bytes_per_agent:
        raise PayloadTooLarge(
            f"state/ is limited to {limits.max_state_bytes_per_agent} bytes per agent "
            f"({total} used)"
        )
    # A new file may also make its missing parent directories: count those too.
    new_entries = 0 if replaced is not None else rel.count("/") + 1
    if entries + new_entries > limits.max_state_entries_per_agent:
        raise PayloadTooLarge(
            f"state/ is limited to {limits.max_state_entries_per_agent} files and directories "
            f"per agent ({entries} used)"
        )


async def state_write(request: web.Request) -> web.Response:
    """Replace one file of one's own ``state/`` with the request body (atomic)."""
    me = _me(request)
    core = _core(request)
    rel = _rel_path(request)
    limit = core.config.core.max_state_file_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"state files are limited to {limit} bytes")
    check_identity_encoding(request.headers.get("Content-Encoding"))
    if any(part.startswith(".") and part.endswith(".tmp") for part in rel.split("/")):
        # The atomic write's own temporary names, which listings leave out.
        raise BadRequest("names of the form .<name>.tmp are reserved")
    async with core.transfer_slot(me):
        data = await _read_body(request, limit)
        # The check and the write under the agent's lock: concurrent writes each
        # passed the check before any of them wrote (36 times the quota, found by
        # an attack review). It also keeps one agent to one walk at a time.
        async with core.state_lock(me):
            # A walk of up to max_state_entries_per_agent entries: off the event loop.
            await asyncio.to_thread(_within_quota, core, _state_dir(core, me), rel, len(data))
            _still_registered(request)  # nothing awaited from here to the write
            write_state(_state_dir(core, me), rel, data, limit)
    core.db.log(me, "state.written", path=rel, size=len(data))
    core.events.publish("state.written", agent=me, path=rel)
    return web.json_response({"path": rel, "size": len(data)})


# Every agent resource follows from the principal and the path alone.


def _res(suffix: str = "") -> authz.PathResource:
    def resource(request: web.Request) -> str:
        return f"agent:{_me(request)}{suffix}"

    return authz.path_resource(resource)


def _res_id(kind: str) -> authz.PathResource:
    def resource(request: web.Request) -> str:
        return f"agent:{_me(request)}/{kind}/{parse_id(request.match_info['id'], kind[:-1])}"

    return authz.path_resource(resource)


@authz.path_resource
def _res_state(request: web.Request) -> str:
    return f"agent:{_me(request)}/state/{_rel_path(request)}"


_ID_PARAM = {"id": ID_PATTERN}
_PATH_PARAM = {"path": STATE_PATH_PATTERN}

ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/v1/whoami", "agent.whoami", _res(), whoami, "Which agent am I"),
    ApiRoute(
        "POST",
        "/v1/questions",
        "question.ask",
        _res("/questions"),
        ask,
        "Ask the operator a question",
        body=_ASK,
        ok_status=201,
        responses={429: "the agent already has OPEN_PER_AGENT open questions"},
    ),
    ApiRoute(
        "GET",
        "/v1/questions/{id}",
        "question.wait",
        _res_id("questions"),
        wait_question,
        "Read (and wait for) the answer to one's own question",
        query=_WAIT,
        path_params=_ID_PARAM,
    ),
    ApiRoute(
        "POST",
        "/v1/approvals",
        "approval.request",
        _res("/approvals"),
        request_approval,
        "Request the operator's approval",
        body=_APPROVAL,
        ok_status=201,
        responses={429: "the agent already has OPEN_PER_AGENT pending approvals"},
    ),
    ApiRoute(
        "GET",
        "/v1/approvals/{id}",
        "approval.wait",
        _res_id("approvals"),
        wait_approval,
        "Read (and wait for) the decision on one's own approval request",
        query=_WAIT,
        path_params=_ID_PARAM,
    ),
    ApiRoute(
        "POST",
        "/v1/messages",
        "message.send",
        _res("/messages"),
        send_message,
        "Send the operator a message",
        body=_MESSAGE,
        ok_status=201,
    ),
    ApiRoute(
        "POST",
        "/v1/status",
        "status.report",
        _res("/status"),
        report_status,
        "Report one's own status",
        body=_STATUS,
    ),
    ApiRoute("GET", "/v1/state", "state.list", _res("/state/"), state_list, "List own state"),
    ApiRoute(
        "GET",
        "/v1/state/{path:.+}",
        "state.read",
        _res_state,
        state_read,
        "Read a file of one's own state/",
        ok_type="application/octet-stream",
        path_params=_PATH_PARAM,
    ),
    ApiRoute(
        "PUT",
        "/v1/state/{path:.+}",
        "state.write",
        _res_state,
        state_write,
        "Write a file of one's own state/",
        raw_body=True,
        path_params=_PATH_PARAM,
    ),
)


def create_agent_app(core: CoreState) -> web.Application:
    """The agent surface (one application serving every agent socket)."""
    limits = core.config.core
    # No middleware: every route is enforced by this one Enforcer (authorisation,
    # decision logging, error bodies), unmatched requests by its fallback.
    app = web.Application(
        client_max_size=max(limits.max_body_bytes, limits.max_state_file_bytes) + 1024
    )
    enforcer = authz.Enforcer(
        engine=core.engine,
        channel="socket",
        principal_of=agent_principal(core.registry),
        on_decision=core.decision_ring.append,
        # The socket is the agent's identity: 100-continue at once, as
        # aiohttp would; another expectation a logged JSON 417.
        expect_handler=authz.expect_handler(channel="socket", send_continue=True),
    )
    app[CORE] = core
    for route in ROUTES:
        handler = route.handler
        if core.instrument is not None:
            handler = core.instrument(route.action, handler)
        enforcer.bind(
            app, route.method, route.path, handler, action=route.action, resource=route.resource
        )
    enforcer.install(app)
    return app
