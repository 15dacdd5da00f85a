"""The operator's pages, rendered by the core and reached only through the gateway.

:func:`setup` registers every page route on the core's operator application
through the core's :class:`enforcer.authz.Enforcer`, each with one catalogue
action, so the core's default-deny enforcer decides every page for the principal the
gateway vouched for (``operator`` only with a valid session):

==================================  ======================  ==========================
route                               action                  resource
==================================  ======================  ==========================
``GET /``                           ``dashboard.view``      ``ui``
``GET /questions``                  ``question.list``       ``questions``
``POST /questions/{id}/answer``     ``question.answer``     ``question:<id>``
``GET /approvals``                  ``approval.list``       ``approvals``
``POST /approvals/{id}/approve``    ``approval.approve``    ``approval:<id>``
``POST /approvals/{id}/deny``       ``approval.deny``       ``approval:<id>``
``GET /agents/{name}``              ``agent.read``          ``agent:<name>``
``GET /agents/{name}/destroy``      ``agent.read``          ``agent:<name>`` (confirm)
``POST /agents/{name}/<verb>``      ``container.<verb>``    ``agent:<name>/container``
``GET /policy``                     ``policy.read``         ``policy``
``POST /policy/reload``             ``policy.reload``       ``policy``
``GET /audit``                      ``audit.read``          ``audit``
``GET /static/<path>``              ``static.read``         ``static/<path>``
==================================  ======================  ==========================

Forms are plain ``application/x-www-form-urlencoded`` POSTs that answer with a
303 back to the page they came from, so everything works without JavaScript;
``static/hive.js`` only adds live refresh from the core's event stream
(``/api/events``) and in-place policy explanations. The gateway checks the
session, the CSRF token and ``Origin`` before a POST reaches the core; the core
checks the form's token again against the ``X-Hive-CSRF-Token`` the gateway
set (defence in depth: a form without the session's token never acts).

Agent content never shares these pages' origin privileges: the per-agent page
embeds the agent's UI in ``<iframe sandbox="allow-scripts allow-forms">``
(no ``allow-same-origin``), and the gateway serves it with a sandbox CSP.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from enforcer import authz, operator_api
from enforcer.agent_api import ID_PATTERN, parse_id
from enforcer.corestate import CORE, CoreState
from enforcer.errors import BadRequest, Forbidden, NotFound
from enforcer.sessions import CSRF_FIELD, tokens_equal
from webui import network_view, policy_view, views

__all__ = ["CSRF_FROM_GATEWAY", "PAGE_CSP", "STATIC_DIR", "TEMPLATE_DIR", "setup"]

_HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = _HERE / "templates"
STATIC_DIR = _HERE / "static"

CSRF_FROM_GATEWAY = "X-Hive-CSRF-Token"
"""The header the gateway sets (after dropping every client ``X-Hive-*``) with
the session's CSRF token, so that the core can put it into the forms it renders."""

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'self'"
)
"""Operator pages load only their own local assets; no inline script at all."""

_VERBS = ("start", "stop", "restart", "destroy")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _core(request: web.Request) -> CoreState:
    return request.app[CORE]


def _csrf(request: web.Request) -> str:
    return request.headers.get(CSRF_FROM_GATEWAY, "")


def _render(
    request: web.Request, template: str, context: Mapping[str, Any], *, title: str, nav: str
) -> web.Response:
    core = _core(request)
    notice_code = request.query.get("notice", "")
    open_q, pending = core.db.open_totals()
    full = {
        "title": title,
        "nav": nav,
        "csrf": _csrf(request),
        "csrf_field": CSRF_FIELD,
        "notice": views.NOTICES.get(notice_code, ""),
        "here": request.path_qs,
        "revision": core.engine.revision,
        "open_questions_total": open_q,
        "pending_approvals_total": pending,
        "fmt": views.format_time,
        "now": time.time(),
        **context,
    }
    response = aiohttp_jinja2.render_template(template, request, full)
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-store"
    return response


async def _form(request: web.Request) -> dict[str, str]:
    """The posted form, after checking its CSRF token against the gateway's header."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequest("expected an application/x-www-form-urlencoded form")
    raw = await request.post()
    given = raw.get(CSRF_FIELD)
    expected = _csrf(request)
    if not isinstance(given, str) or not expected or not tokens_equal(given, expected):
        raise Forbidden("missing or wrong CSRF token")
    fields: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(value, str):
            raise BadRequest(f"field {key!r} must be text")
        fields.setdefault(key, value)
    return fields


def _back(form: Mapping[str, str], default: str, notice: str) -> web.Response:
    target = views.safe_next(form.get("next"), default)
    base, _, fragment = target.partition("#")
    sep = "&" if "?" in base else "?"
    location = f"{base}{sep}notice={notice}" + (f"#{fragment}" if fragment else "")
    return web.Response(status=303, headers={"Location": location})


# --- pages -------------------------------------------------------------------------


def _last_activity(core: CoreState, name: str) -> float | None:
    entries = core.db.journal(name, limit=1)
    return entries[0].at if entries else None


async def dashboard(request: web.Request) -> web.Response:
    """Every agent: status, last activity, loose ends, lifecycle buttons."""
    core = _core(request)
    agents = core.db.agents()
    rows = views.agent_rows(
        agents,
        {a.name: core.backend.status(a.name) for a in agents},
        {a.name: _last_activity(core, a.name) for a in agents},
        core.db.questions(status="open"),
        core.db.approvals(status="pending"),
    )
    return _render(request, "dashboard.html", {"rows": rows}, title="Dashboard", nav="dashboard")


async def questions_page(request: web.Request) -> web.Response:
    """Open questions with answer forms, and the answered ones."""
    db = _core(request).db
    context = {"open": db.questions(status="open"), "answered": db.questions(status="answered")}
    return _render(request, "questions.html", context, title="Questions", nav="questions")


async def approvals_page(request: web.Request) -> web.Response:
    """Pending approval requests with approve/deny, and the decided ones."""
    db = _core(request).db
    decided = [a for a in db.approvals(status="all") if a.decision is not None][:100]
    context = {"pending": db.approvals(status="pending"), "decided": decided}
    return _render(request, "approvals.html", context, title="Approvals", nav="approvals")


def _agent_context(request: web.Request) -> dict[str, Any]:
    core = _core(request)
    name = operator_api.parse_agent_name(request.match_info["name"])
    record = core.db.agent(name)
    (row,) = views.agent_rows(
        [record],
        {name: core.backend.status(name)},
        {name: _last_activity(core, name)},
        core.db.questions(status="open", agent=name),
        core.db.approvals(status="pending", agent=name),
    )
    return {
        "agent": record,
        "row": row,
        "questions": core.db.questions(status="open", agent=name),
        "approvals": core.db.approvals(status="pending", agent=name),
        "messages": core.db.messages(name, limit=10),
        "resources": views.resource_use(operator_api.agent_resources(core, name)),
    }


async def agent_page(request: web.Request) -> web.Response:
    """One agent: core-rendered chrome around its own UI in a sandboxed frame."""
    context = _agent_context(request)
    name = context["agent"].name
    return _render(request, "agent.html", context, title=f"Agent {name}", nav="dashboard")


async def destroy_confirm(request: web.Request) -> web.Response:
    """Ask before destroying an agent (the no-JavaScript confirmation step)."""
    context = _agent_context(request)
    name = context["agent"].name
    return _render(request, "destroy.html", context, title=f"Destroy {name}?", nav="dashboard")


async def policy_page(request: web.Request) -> web.Response:
    """The access matrix, the live revision, the last refused reload, one explanation."""
    engine = _core(request).engine
    policy = engine.current
    grid = policy_view.policy_grid(policy) if policy is not None else None
    subject = request.query.get("subject", "")
    action = request.query.get("action", "")
    explanation = None
    if policy is not None and subject and action:
        explanation = policy_view.explain_cell(policy, subject, action)
        if explanation is None:
            raise BadRequest("unknown subject or action")
    context = {
        "grid": grid,
        "engine": engine,
        "refusal": engine.last_refusal,
        "explanation": explanation,
        "subject": subject,
        "action": action,
    }
    return _render(request, "policy.html", context, title="Policy", nav="policy")


_DECISION_VALUES = ("", "allow", "deny")


def _filter_value(request: web.Request, key: str) -> str:
    value = request.query.get(key, "").strip()
    if len(value) > 200 or any(ord(c) < 32 for c in value):
        raise BadRequest(f"bad {key} filter")
    return value


async def audit_page(request: web.Request) -> web.Response:
    """The decision log tail (filtered) and the last network probe as a heat-map."""
    core = _core(request)
    flt = views.DecisionFilter(
        principal=_filter_value(request, "principal"),
        action=_filter_value(request, "action"),
        decision=_filter_value(request, "decision"),
    )
    if flt.decision not in _DECISION_VALUES:
        raise BadRequest("decision filter must be allow or deny")
    limit_text = request.query.get("limit", "50")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses (a 500).
    if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 4) or not (
        1 <= int(limit_text) <= 1000
    ):
        raise BadRequest("limit must be 1-1000")
    ring = list(core.decisions)
    context = {
        "flt": flt,
        "decisions": views.filter_decisions(ring, flt, limit=int(limit_text)),
        "limit": int(limit_text),
        "total": len(ring),
        "principals": sorted({str(e.get("principal")) for e in ring}),
        "actions": sorted({str(e.get("action")) for e in ring}),
        "network": network_view.load_probe(core.config.state_dir),
    }
    return _render(request, "audit.html", context, title="Audit", nav="audit")


# --- actions -----------------------------------------------------------------------


async def answer(request: web.Request) -> web.Response:
    """Answer a question (form: ``answer``, ``next``)."""
    qid = parse_id(request.match_info["id"], "question")
    form = await _form(request)
    text = form.get("answer", "").strip()
    if not text or len(text) > 8000:
        raise BadRequest("the answer must be 1-8000 characters")
    core = _core(request)
    record = core.db.answer(qid, text)
    core.events.publish("question.answered", agent=record.agent, id=qid)
    return _back(form, "/questions", "answered")


def _decide(decision: str) -> _Handler:
    async def handler(request: web.Request) -> web.Response:
        aid = parse_id(request.match_info["id"], "approval")
        form = await _form(request)
        reason = form.get("reason", "").strip() or None
        if reason is not None and len(reason) > 2000:
            raise BadRequest("the reason must be at most 2000 characters")
        core = _core(request)
        record = core.db.decide(aid, decision, reason)
        core.events.publish(f"approval.{decision}", agent=record.agent, id=aid)
        return _back(form, "/approvals", decision)

    handler.__name__ = f"approval_{decision}_form"
    return handler


def _api_handler(action: str) -> _Handler:
    for route in operator_api.ROUTES:
        if route.action == action:
            handler: _Handler = route.handler
            return handler
    raise LookupError(f"the operator API has no {action} route")


def _lifecycle(verb: str) -> _Handler:
    # The operator API's own handler does the work (same order, same journal
    # lines, same events); this wrapper only adds the form and the redirect.
    api = _api_handler(f"container.{verb}")

    async def handler(request: web.Request) -> web.Response:
        name = operator_api.parse_agent_name(request.match_info["name"])
        form = await _form(request)
        if verb == "destroy" and form.get("confirm") != name:
            raise BadRequest("destroying an agent needs its confirmation form")
        await api(request)
        default = "/" if verb == "destroy" else f"/agents/{name}"
        target = "/" if verb == "destroy" else form.get("next", default)
        return _back({"next": target}, default, verb)

    handler.__name__ = f"container_{verb}_form"
    return handler


async def policy_reload(request: web.Request) -> web.Response:
    """Reload the policy from disk (the last good one stays if the new one is refused)."""
    form = await _form(request)
    core = _core(request)
    result = core.engine.reload()
    core.events.publish("policy.reloaded", ok=result.ok, revision=result.revision)
    return _back(form, "/policy", "reloaded" if result.ok else "reload-refused")


# --- wiring ------------------------------------------------------------------------


def _agent_res(suffix: str = "") -> Callable[[web.Request], str]:
    def resource(request: web.Request) -> str:
        return f"agent:{operator_api.parse_agent_name(request.match_info['name'])}{suffix}"

    return resource


def _id_res(kind: str) -> Callable[[web.Request], str]:
    def resource(request: web.Request) -> str:
        return f"{kind}:{parse_id(request.match_info['id'], kind)}"

    return resource


def _static_res(request: web.Request) -> str:
    return f"static/{request.match_info.get('filename', '')}"


def _static_files(directory: Path) -> dict[str, Path]:
    """The shipped assets: regular files directly in ``directory`` (no symlinks)."""
    return {p.name: p for p in sorted(directory.iterdir()) if p.is_file() and not p.is_symlink()}


# Served from a fixed list made once, so no request path ever reaches the file system.
_STATIC_FILES = _static_files(STATIC_DIR)


async def _static(request: web.Request) -> web.StreamResponse:
    """One shipped asset (404 for any other name)."""
    path = _STATIC_FILES.get(request.match_info["filename"])
    if path is None:
        raise NotFound("no such static file")
    return web.FileResponse(path)


def setup(app: web.Application, enforcer: authz.Enforcer) -> None:
    """Register the pages, their actions and the templates on the core's operator app."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=jinja2.select_autoescape(default=True),
        undefined=jinja2.StrictUndefined,
        default_helpers=False,
    )
    name, qid = f"{{name:{operator_api.AGENT_NAME}}}", f"{{id:{ID_PATTERN}}}"
    enforcer.bind(app, "GET", "/", dashboard, action="dashboard.view", resource="ui")
    enforcer.bind(
        app, "GET", "/questions", questions_page, action="question.list", resource="questions"
    )
    enforcer.bind(
        app,
        "POST",
        f"/questions/{qid}/answer",
        answer,
        action="question.answer",
        resource=_id_res("question"),
    )
    enforcer.bind(
        app, "GET", "/approvals", approvals_page, action="approval.list", resource="approvals"
    )
    for verb, decision in (("approve", "approved"), ("deny", "denied")):
        enforcer.bind(
            app,
            "POST",
            f"/approvals/{qid}/{verb}",
            _decide(decision),
            action=f"approval.{verb}",
            resource=_id_res("approval"),
        )
    enforcer.bind(
        app, "GET", f"/agents/{name}", agent_page, action="agent.read", resource=_agent_res()
    )
    enforcer.bind(
        app,
        "GET",
        f"/agents/{name}/destroy",
        destroy_confirm,
        action="agent.read",
        resource=_agent_res(),
    )
    for verb in _VERBS:
        enforcer.bind(
            app,
            "POST",
            f"/agents/{name}/{verb}",
            _lifecycle(verb),
            action=f"container.{verb}",
            resource=_agent_res("/container"),
        )
    enforcer.bind(app, "GET", "/policy", policy_page, action="policy.read", resource="policy")
    enforcer.bind(
        app, "POST", "/policy/reload", policy_reload, action="policy.reload", resource="policy"
    )
    enforcer.bind(app, "GET", "/audit", audit_page, action="audit.read", resource="audit")
    enforcer.bind(
        app, "GET", "/static/{filename}", _static, action="static.read", resource=_static_res
    )
