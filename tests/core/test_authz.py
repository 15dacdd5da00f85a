"""Every route bound to one catalogue action; default deny; raw paths checked as received."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from enforcer import agent_api, authz, operator_api
from enforcer.config import default_policy_dir
from enforcer.core import create_app
from enforcer.policy import PolicyEngine
from tests.core.conftest import Core, make_config


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(default_policy_dir())


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({})


def _bind(engine: PolicyEngine, app: web.Application, method: str, path: str, action: str) -> None:
    """Bind through an enforcer, as every daemon does (the resource is a constant)."""
    enforcer = authz.Enforcer(engine=engine, channel="gateway", principal_of=lambda _r: "x")
    enforcer.bind(app, method, path, _ok, action=action, resource="x")


async def test_an_unbound_route_is_a_start_up_error(
    hive_dirs: tuple[Path, Path],
) -> None:
    app = create_app(make_config(*hive_dirs))
    app.router.add_get("/api/sneaky", _ok)  # not through an enforcer
    runner = web.AppRunner(app)
    with pytest.raises(authz.UnboundRouteError, match="/api/sneaky"):
        await runner.setup()
    await runner.cleanup()


def test_auto_added_head_routes_count_as_unbound(engine: PolicyEngine) -> None:
    app = web.Application()
    _bind(engine, app, "GET", "/x", "health.read")
    authz.check_routes(app, engine.current.catalogue, channel="gateway")  # type: ignore[union-attr]
    app.router.add_get("/y", _ok)  # adds GET and HEAD
    with pytest.raises(authz.UnboundRouteError, match="HEAD /y"):
        authz.check_routes(app, engine.current.catalogue, channel="gateway")  # type: ignore[union-attr]


def test_sub_applications_and_static_routes_are_checked(
    engine: PolicyEngine, tmp_path: Path
) -> None:
    catalogue = engine.current.catalogue  # type: ignore[union-attr]
    app = web.Application()
    sub = web.Application()
    _bind(engine, sub, "GET", "/ok", "health.read")
    app.add_subapp("/sub", sub)
    authz.check_routes(app, catalogue, channel="gateway")
    sub2 = web.Application()
    sub2.router.add_route("OPTIONS", "/opt", _ok)
    app.add_subapp("/sub2", sub2)
    with pytest.raises(authz.UnboundRouteError, match="OPTIONS"):
        authz.check_routes(app, catalogue, channel="gateway")
    static = web.Application()
    static.router.add_static("/static", tmp_path)  # serves files, bound to nothing
    with pytest.raises(authz.UnboundRouteError, match="/static"):
        authz.check_routes(static, catalogue, channel="gateway")


def test_unknown_actions_are_refused(engine: PolicyEngine) -> None:
    app = web.Application()
    _bind(engine, app, "GET", "/x", "no.such.action")
    with pytest.raises(authz.UnboundRouteError, match="not in the catalogue"):
        authz.check_routes(app, engine.current.catalogue, channel="gateway")  # type: ignore[union-attr]


@pytest.mark.parametrize("action", ["question.answer", "approval.approve", "container.stop"])
def test_operator_actions_cannot_be_bound_on_the_socket_channel(
    engine: PolicyEngine, action: str
) -> None:
    app = web.Application()
    _bind(engine, app, "POST", "/x", action)
    with pytest.raises(authz.UnboundRouteError, match="no route on the socket channel"):
        authz.check_routes(app, engine.current.catalogue, channel="socket")  # type: ignore[union-attr]


def test_the_agent_surface_holds_only_agent_self_actions(engine: PolicyEngine) -> None:
    catalogue = engine.current.catalogue  # type: ignore[union-attr]
    assert {catalogue[r.action].authority.value for r in agent_api.ROUTES} == {"agent-self"}
    assert {catalogue[r.action].authority.value for r in operator_api.ROUTES} <= {
        "operator",
        "public",
    }


async def test_the_running_agent_app_routes_are_exactly_the_agent_table(core: Core) -> None:
    app = core.state.agent_app
    assert app is not None
    seen = {(r.method, r.resource.canonical) for r, _ in authz.route_bindings(app) if r.resource}
    assert seen == {(r.method, re.sub(r":[^}]*\}", "}", r.path)) for r in agent_api.ROUTES}


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/../api/agents",
        "/v1/./whoami",
        "/v1//whoami",
        "/v1/state/%2e%2e/x",
        "/v1/state/a%2Fb",
        "/v1/state/a%5cb",
        "/v1/state/a%00b",
        "/v1/state/%252e",
        "/v1\\whoami",
        "v1/whoami",
        "/" + "a" * 3000,
    ],
)
def test_unsafe_raw_paths_are_refused(raw: str) -> None:
    assert authz.unsafe_raw_path_reason(raw) is not None


@pytest.mark.parametrize(
    "raw", ["/v1/whoami", "/v1/state/notes%20today.md", "/v1/questions/3?wait=1", "/api/agents/"]
)
def test_ordinary_raw_paths_pass(raw: str) -> None:
    assert authz.unsafe_raw_path_reason(raw) is None


async def test_every_decision_is_logged_once_with_its_fields(core: Core) -> None:
    before = len(core.state.decisions)
    async with core.agent("alpha") as agent:
        await agent.get("/v1/whoami")
    async with core.operator(headers={}) as anon:
        await anon.post("/api/approvals/1/approve")
    events = list(core.state.decisions)[before:]
    assert len(events) == 2
    allow, deny = events
    fields = {"principal", "channel", "resource", "action", "decision", "rule", "revision"}
    assert fields <= set(allow)
    assert "request_id" in allow
    assert (allow["principal"], allow["channel"], allow["action"], allow["decision"]) == (
        "agent:alpha",
        "socket",
        "agent.whoami",
        "allow",
    )
    assert allow["rule"].startswith("policy.csv:")
    assert (deny["principal"], deny["resource"], deny["decision"]) == (
        "anonymous",
        "approval:1",
        "deny",
    )


async def test_a_route_bound_but_not_enforced_is_a_start_up_error(
    hive_dirs: tuple[Path, Path],
) -> None:
    app = create_app(make_config(*hive_dirs))
    # A binding recorded by hand: check_routes sees an action, but the handler
    # is not the enforcer's, so nothing would decide its requests.
    route = app.router.add_route("GET", "/api/loose", _ok)
    app[authz.ROUTE_BINDINGS][route] = authz.RouteBinding("health.read", lambda _r: "health")
    runner = web.AppRunner(app)
    with pytest.raises(authz.UnboundRouteError, match="/api/loose: bound but not enforced"):
        await runner.setup()
    await runner.cleanup()


async def test_the_only_unbound_agent_route_is_the_enforcers_fallback(core: Core) -> None:
    app = core.state.agent_app
    assert app is not None
    bound = {r for r, _ in authz.route_bindings(app)}
    rest = [r.resource.canonical for r in app.router.routes() if r not in bound and r.resource]
    assert rest == ["/{_unmatched}"]


async def test_unmatched_routes_are_404_json_and_run_nothing(core: Core) -> None:
    async with core.operator() as op:
        resp = await op.get("/api/nothing-here")
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
        resp = await op.delete("/api/agents")
        assert resp.status == 405
        assert "reason" in await resp.json()


async def test_a_path_resource_is_computed_once_per_target_and_policy_version(
    engine: PolicyEngine,
) -> None:
    calls: list[str] = []
    seen: list[tuple[Any, str]] = []

    @authz.path_resource
    def by_path(request: web.Request) -> str:
        calls.append(request.raw_path)
        return "health"

    def by_header(request: web.Request) -> str:  # not declared path-only: never remembered
        return request.headers.get("X-Which", "health")

    app = web.Application()
    enforcer = authz.Enforcer(
        engine=engine,
        channel="gateway",
        principal_of=lambda _r: "anonymous",
        on_decision=seen.append,
    )
    enforcer.bind(app, "GET", "/p", _ok, action="health.read", resource=by_path)
    enforcer.bind(app, "GET", "/h", _ok, action="health.read", resource=by_header)
    enforcer.install(app)
    async with TestClient(TestServer(app)) as client:
        for target in ("/p", "/p", "/p?x=1", "/p"):
            assert (await client.get(target)).status == 200
        assert calls == ["/p", "/p?x=1"], "a repeated target reuses its verdict"
        assert engine.reload().ok
        assert (await client.get("/p")).status == 200
        assert calls == ["/p", "/p?x=1", "/p"], "a new policy version decides afresh"
        seen.clear()
        await client.get("/h", headers={"X-Which": "one"})
        await client.get("/h", headers={"X-Which": "two"})
        assert [event["resource"] for event, _rid in seen] == ["one", "two"]
