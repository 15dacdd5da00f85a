"""The operator surface: JSON over ``core.sock`` under ``/api/``, reached only via the gateway.

Every route is an operator-class action (plus the public health check); the
principal is ``operator`` only for the gateway's uid with its marker
(:func:`enforcer.transport.core_principal`), and the policy decides the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

from aiohttp import web

from enforcer.agent_api import ID_PATTERN, STATE_PATH_PATTERN, list_state, parse_id, read_state
from enforcer.bodies import Field, Schema, check_identity_encoding, parse_body, parse_query
from enforcer.confined import split_rel_path
from enforcer.corestate import CORE, CoreState
from enforcer.errors import BadRequest, Conflict, HiveError, NotFound, Unavailable
from enforcer.log import get_logger
from enforcer.names import AGENT_NAME
from enforcer.openapi import ApiRoute
from enforcer.policy.follow import publish_revision
from enforcer.store import AgentRecord

__all__ = [
    "AGENT_NAME",
    "ROUTES",
    "TITLE",
    "agent_resources",
    "parse_agent_name",
    "publish_live_revision",
    "register_agent",
]

TITLE = "hive-boundary operator API"
_log = get_logger("enforcer.operator_api")
_NAME = re.compile(AGENT_NAME)


def parse_agent_name(text: str) -> str:
    """An agent name (:data:`enforcer.names.AGENT_NAME`), else :class:`BadRequest`."""
    if _NAME.fullmatch(text) is None:
        raise BadRequest(f"bad agent name (expected {AGENT_NAME})")
    return text


def _core(request: web.Request) -> CoreState:
    return request.app[CORE]


def _name(request: web.Request) -> str:
    return parse_agent_name(request.match_info["name"])


async def _json(request: web.Request, schema: Schema) -> dict[str, Any]:
    check_identity_encoding(request.headers.get("Content-Encoding"))
    raw = await request.read()
    return parse_body(raw, schema, max_bytes=_core(request).config.core.max_body_bytes)


def _query(request: web.Request, schema: Schema) -> dict[str, Any]:
    return parse_query(request.query, schema)


def _agent_json(core: CoreState, record: AgentRecord) -> dict[str, Any]:
    out = record.to_json()
    out["running"] = core.backend.status(record.name)
    out["socket"] = str(core.config.agent_socket(record.name))
    # Where the gateway reaches the agent's own web UI (its registry reads this);
    # a backend that knows (the container backend: the veth address) says so.
    ui_url = getattr(core.backend, "ui_url", None)
    out["ui_url"] = ui_url(record.name) if callable(ui_url) else None
    out["resources"] = agent_resources(core, record.name)
    return out


def agent_resources(core: CoreState, name: str) -> dict[str, Any] | None:
    """Agent ``name``'s control-group limits and use, where the backend bounds agents."""
    resources = getattr(core.backend, "resources", None)
    found = resources(name) if callable(resources) else None
    return found if isinstance(found, dict) else None


# --- agents -------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    """Liveness and the live policy revision."""
    return web.json_response({"ok": True, "revision": _core(request).engine.revision})


async def list_agents(request: web.Request) -> web.Response:
    """Every agent with its status."""
    core = _core(request)
    return web.json_response({"agents": [_agent_json(core, a) for a in core.db.agents()]})


_REGISTER = Schema(
    {
        "name": Field("str", pattern=AGENT_NAME, max_len=25, description="agent name"),
        "uid": Field(
            "int",
            required=False,
            minimum=0,
            maximum=2**31 - 2,
            description=(
                "the agent's uid; leave it out to have hive-priv allocate one "
                "(the priv backend; never a uid it handed out before)"
            ),
        ),
        "command": Field(
            "str_list", required=False, max_items=64, max_len=4096, description="argv to run"
        ),
    }
)


async def _register_resource(request: web.Request) -> str:
    # The resource (agent:<name>) is named in the body: parse it strictly here
    # so a malformed body is refused before the decision, not after.
    body = await _json(request, _REGISTER)
    return f"agent:{body['name']}"


async def register_agent(
    core: CoreState, name: str, uid: int | None, command: tuple[str, ...]
) -> None:
    """Record the agent, prepare its directories, open its socket (rolls back on failure).

    ``uid`` None: the backend allocates one (hive-priv's never reuses a uid);
    a backend that does not allocate uids refuses that (409).
    """
    allocated = False
    if uid is None:
        with contextlib.suppress(NotFound):
            core.db.agent(name)
            raise Conflict(f"agent {name!r} already exists")
        try:
            chosen = await core.backend.allocate_uid(name, command)
        except Conflict:
            raise  # a container of that name exists (another registration): 409, left alone
        except HiveError as e:
            raise Unavailable(f"cannot create agent {name!r}: {e.reason}") from e
        if chosen is None:
            # 409: the request is well-formed; this core's backend (its state) cannot serve it.
            raise Conflict("this core's backend does not allocate uids: name the agent's uid")
        uid, allocated = chosen, True
    unborn = AgentRecord(name, uid, command, time.time(), "", "", None)
    try:
        record = core.db.add_agent(name, uid, command)
    except Conflict:
        raise  # registered meanwhile (its container, if any, is its own): left alone
    except Exception:
        if allocated:  # no row: the container made for it goes too
            await _undo_allocation(core, unborn)
        raise
    try:
        await core.backend.create(record)
        await core.agent_sites.add(name, uid)
    except Exception as e:
        core.db.remove_agent(name)
        if allocated:  # found by an attack review: the container outlived its row
            await _undo_allocation(core, unborn)
        raise Unavailable(f"cannot create agent {name!r}: {e}") from e
    core.events.publish("agent.registered", agent=name)


async def _undo_allocation(core: CoreState, unborn: AgentRecord) -> None:
    """Destroy the container a failed registration made (its uid is never handed out again)."""
    try:
        await core.backend.destroy(unborn)
    except Exception as e:  # logged: the registration's own error is what the operator sees
        _log.error("agent.register.rollback_failed", agent=unborn.name, error=str(e))


async def register(request: web.Request) -> web.Response:
    """Register an agent: a row, its directories and its socket, without restart."""
    body = await _json(request, _REGISTER)
    core = _core(request)
    await register_agent(core, body["name"], body.get("uid"), tuple(body.get("command", ())))
    return web.json_response(_agent_json(core, core.db.agent(body["name"])), status=201)


async def agent_details(request: web.Request) -> web.Response:
    """An agent's details: status, open questions/approvals, recent messages."""
    core = _core(request)
    name = _name(request)
    record = core.db.agent(name)
    out = _agent_json(core, record)
    out["questions"] = [q.to_json() for q in core.db.questions(status="open", agent=name)]
    out["approvals"] = [a.to_json() for a in core.db.approvals(status="pending", agent=name)]
    out["messages"] = [m.to_json() for m in core.db.messages(name, limit=50)]
    return web.json_response(out)


_JOURNAL = Schema(
    {
        "limit": Field("int", required=False, minimum=1, maximum=1000),
        "before": Field("int", required=False, minimum=1, maximum=2**62),
    }
)


async def agent_journal(request: web.Request) -> web.Response:
    """An agent's journal, newest first."""
    core = _core(request)
    name = _name(request)
    core.db.agent(name)
    query = _query(request, _JOURNAL)
    entries = core.db.journal(name, limit=query.get("limit", 100), before=query.get("before"))
    return web.json_response({"agent": name, "entries": [e.to_json() for e in entries]})


async def agent_config(request: web.Request) -> web.Response:
    """An agent's configuration (uid, command, socket, directories)."""
    core = _core(request)
    name = _name(request)
    record = core.db.agent(name)
    return web.json_response(
        {
            "name": record.name,
            "uid": record.uid,
            "command": list(record.command),
            "created_at": record.created_at,
            "socket": str(core.config.agent_socket(name)),
            "state_dir": str(core.config.agent_dir(name) / "state"),
        }
    )


async def agent_state_list(request: web.Request) -> web.Response:
    """The files of an agent's ``state/``."""
    core = _core(request)
    name = _name(request)
    core.db.agent(name)
    files = await asyncio.to_thread(list_state, core.config.agent_dir(name) / "state")
    return web.json_response({"agent": name, "files": files})


async def agent_state_read(request: web.Request) -> web.Response:
    """One file of an agent's ``state/`` (confined; bytes)."""
    core = _core(request)
    name = _name(request)
    core.db.agent(name)
    rel = request.match_info["path"]
    data = read_state(
        core.config.agent_dir(name) / "state", rel, core.config.core.max_state_file_bytes
    )
    return web.Response(body=data, content_type="application/octet-stream")


def _lifecycle(verb: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        core = _core(request)
        name = _name(request)
        record = core.db.agent(name)
        if verb == "destroy":
            # The socket goes first: from here on the agent can change nothing.
            with contextlib.suppress(NotFound):
                await core.agent_sites.remove(name)
            await core.backend.destroy(record)
            core.db.remove_agent(name)
            core.events.publish("agent.destroyed", agent=name)
            return web.json_response({"agent": name, "destroyed": True})
        await getattr(core.backend, verb)(record)
        core.db.log(name, f"container.{verb}", by="operator")
        core.events.publish(f"container.{verb}", agent=name)
        return web.json_response(_agent_json(core, core.db.agent(name)))

    handler.__name__ = f"container_{verb}"
    handler.__doc__ = f"{verb.capitalize()} an agent through the lifecycle backend."
    return handler


# --- questions and approvals ------------------------------------------------------------

_QUESTIONS = Schema(
    {
        "status": Field("str", required=False, enum=("open", "answered", "all")),
        "agent": Field("str", required=False, pattern=AGENT_NAME, max_len=25),
    }
)


async def list_questions(request: web.Request) -> web.Response:
    """Questions (``?status=open|answered|all``, ``?agent=``)."""
    query = _query(request, _QUESTIONS)
    records = _core(request).db.questions(
        status=query.get("status", "all"), agent=query.get("agent")
    )
    return web.json_response({"questions": [q.to_json() for q in records]})


_ANSWER = Schema({"answer": Field("str", min_len=1, max_len=8000)})


async def answer_question(request: web.Request) -> web.Response:
    """Answer an open question (409 if already answered)."""
    qid = parse_id(request.match_info["id"], "question")
    body = await _json(request, _ANSWER)
    core = _core(request)
    record = core.db.answer(qid, body["answer"])
    core.events.publish("question.answered", agent=record.agent, id=qid)
    return web.json_response(record.to_json())


_APPROVALS = Schema(
    {
        "status": Field("str", required=False, enum=("pending", "approved", "denied", "all")),
        "agent": Field("str", required=False, pattern=AGENT_NAME, max_len=25),
    }
)


async def list_approvals(request: web.Request) -> web.Response:
    """Approval requests (``?status=pending|approved|denied|all``, ``?agent=``)."""
    query = _query(request, _APPROVALS)
    records = _core(request).db.approvals(
        status=query.get("status", "all"), agent=query.get("agent")
    )
    return web.json_response({"approvals": [a.to_json() for a in records]})


_DECIDE = Schema({"reason": Field("str", required=False, max_len=2000)})


def _decide(decision: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        aid = parse_id(request.match_info["id"], "approval")
        body = await _json(request, _DECIDE)
        core = _core(request)
        record = core.db.decide(aid, decision, body.get("reason"))
        core.events.publish(f"approval.{decision}", agent=record.agent, id=aid)
        return web.json_response(record.to_json())

    handler.__name__ = f"approval_{decision}"
    return handler


# --- policy, audit, events -----------------------------------------------------------


async def policy_read(request: web.Request) -> web.Response:
    """The live policy: revision, when it was loaded, the last refused reload."""
    engine = _core(request).engine
    refusal = engine.last_refusal
    return web.json_response(
        {
            "revision": engine.revision,
            "loaded_at": engine.loaded_at,
            "directory": str(engine.directory),
            "last_refusal": None if refusal is None else {"at": refusal[0], "reason": refusal[1]},
        }
    )


def publish_live_revision(core: CoreState) -> None:
    """Publish the core's live policy revision for the processes that follow it."""
    try:
        publish_revision(core.config.run_dir, core.engine.revision)
    except OSError as e:
        # The core decides with its policy either way; followers stay behind
        # until the next publish, and this says why.
        _log.error("policy.publish_failed", reason=str(e), revision=core.engine.revision)


async def policy_reload(request: web.Request) -> web.Response:
    """Reload the policy from disk (keeps the last good one if the new one is invalid)."""
    core = _core(request)
    result = core.engine.reload()
    if result.ok:
        publish_live_revision(core)  # the gateway's workers follow it
    core.events.publish("policy.reloaded", ok=result.ok, revision=result.revision)
    return web.json_response(
        {"ok": result.ok, "revision": result.revision, "error": result.error},
        status=200 if result.ok else 409,
    )


_DECISIONS = Schema(
    {
        "limit": Field("int", required=False, minimum=1, maximum=1000),
        "principal": Field(
            "str",
            required=False,
            min_len=1,
            max_len=200,
            description="only this principal's decisions (a prefix when it ends in *)",
        ),
    }
)


async def audit_decisions(request: web.Request) -> web.Response:
    """The newest policy decisions (both surfaces), newest last; optionally one principal's.

    The ring keeps each principal's newest decisions apart
    (:class:`enforcer.corestate.DecisionRing`): another agent's flood never
    pushes a principal's own out of ``?principal=``.
    """
    query = _query(request, _DECISIONS)
    ring = _core(request).decision_ring
    decisions = ring.newest(query.get("limit", 100), principal=query.get("principal", ""))
    return web.json_response({"decisions": decisions})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``data:`` JSON line per change, a comment every 15 s."""
    core = _core(request)
    queue = core.events.subscribe()
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    try:
        await resp.prepare(request)
        await resp.write(b": hive-boundary events\n\n")
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), 15.0)
            except TimeoutError:
                await resp.write(f": keepalive {time.time():.0f}\n\n".encode())
                continue
            if event is None:
                break
            payload = json.dumps(event, sort_keys=True)
            await resp.write(
                f"id: {event['seq']}\nevent: {event['kind']}\ndata: {payload}\n\n".encode()
            )
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        core.events.unsubscribe(queue)
    return resp


# --- route table -----------------------------------------------------------------------


def _agent_res(suffix: str = "") -> Any:
    def resource(request: web.Request) -> str:
        return f"agent:{_name(request)}{suffix}"

    return resource


def _state_res(request: web.Request) -> str:
    rel = request.match_info.get("path", "")
    split_rel_path(rel)
    return f"agent:{_name(request)}/state/{rel}"


def _id_res(kind: str) -> Any:
    def resource(request: web.Request) -> str:
        return f"{kind}:{parse_id(request.match_info['id'], kind)}"

    return resource


_N = {"name": AGENT_NAME}
_NI = {"id": ID_PATTERN}
_NP = {"name": AGENT_NAME, "path": STATE_PATH_PATTERN}
_CONFLICT = {409: "conflicts with the current state"}

ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/api/health", "health.read", "health", health, "Liveness"),
    ApiRoute("GET", "/api/agents", "agent.list", "agents", list_agents, "List agents"),
    ApiRoute(
        "POST",
        "/api/agents",
        "agent.register",
        _register_resource,
        register,
        "Register an agent (opens its socket)",
        body=_REGISTER,
        ok_status=201,
        responses={**_CONFLICT, 503: "could not create it"},
    ),
    ApiRoute(
        "GET",
        "/api/agents/{name}",
        "agent.read",
        _agent_res(),
        agent_details,
        "An agent's details",
        path_params=_N,
    ),
    ApiRoute(
        "GET",
        "/api/agents/{name}/journal",
        "agent.journal.read",
        _agent_res("/journal"),
        agent_journal,
        "An agent's journal",
        query=_JOURNAL,
        path_params=_N,
    ),
    ApiRoute(
        "GET",
        "/api/agents/{name}/config",
        "agent.config.read",
        _agent_res("/config"),
        agent_config,
        "An agent's configuration",
        path_params=_N,
    ),
    ApiRoute(
        "GET",
        "/api/agents/{name}/state",
        "agent.state.read",
        _agent_res("/state/"),
        agent_state_list,
        "List an agent's state files",
        path_params=_N,
    ),
    ApiRoute(
        "GET",
        "/api/agents/{name}/state/{path:.+}",
        "agent.state.read",
        _state_res,
        agent_state_read,
        "Read an agent's state file",
        ok_type="application/octet-stream",
        path_params=_NP,
    ),
    *(
        ApiRoute(
            "POST",
            f"/api/agents/{{name}}/{verb}",
            f"container.{verb}",
            _agent_res("/container"),
            _lifecycle(verb),
            f"{verb.capitalize()} an agent",
            path_params=_N,
            responses={**_CONFLICT, 503: "the lifecycle backend failed"},
        )
        for verb in ("start", "stop", "restart", "destroy")
    ),
    ApiRoute(
        "GET",
        "/api/questions",
        "question.list",
        "questions",
        list_questions,
        "List questions",
        query=_QUESTIONS,
    ),
    ApiRoute(
        "POST",
        "/api/questions/{id}/answer",
        "question.answer",
        _id_res("question"),
        answer_question,
        "Answer a question",
        body=_ANSWER,
        path_params=_NI,
        responses=_CONFLICT,
    ),
    ApiRoute(
        "GET",
        "/api/approvals",
        "approval.list",
        "approvals",
        list_approvals,
        "List approval requests",
        query=_APPROVALS,
    ),
    ApiRoute(
        "POST",
        "/api/approvals/{id}/approve",
        "approval.approve",
        _id_res("approval"),
        _decide("approved"),
        "Approve a pending request",
        body=_DECIDE,
        path_params=_NI,
        responses=_CONFLICT,
    ),
    ApiRoute(
        "POST",
        "/api/approvals/{id}/deny",
        "approval.deny",
        _id_res("approval"),
        _decide("denied"),
        "Deny a pending request",
        body=_DECIDE,
        path_params=_NI,
        responses=_CONFLICT,
    ),
    ApiRoute("GET", "/api/policy", "policy.read", "policy", policy_read, "The live policy"),
    ApiRoute(
        "POST",
        "/api/policy/reload",
        "policy.reload",
        "policy",
        policy_reload,
        "Reload the policy",
        responses={409: "the new policy is invalid; the last good one stays"},
    ),
    ApiRoute(
        "GET",
        "/api/audit/decisions",
        "audit.read",
        "audit",
        audit_decisions,
        "Recent policy decisions",
        query=_DECISIONS,
    ),
    ApiRoute(
        "GET",
        "/api/events",
        "events.read",
        "events",
        events,
        "Live changes (server-sent events)",
        ok_type="text/event-stream",
    ),
)
