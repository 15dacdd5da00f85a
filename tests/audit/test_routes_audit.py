"""Every route of every daemon, introspected from the real applications."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from enforcer import authz
from enforcer.audit import AuditOptions, build_report
from enforcer.audit.routes import RouteFact, app_routes, daemon_apps, gather_routes, priv_routes
from enforcer.config import CoreConfig, HiveConfig, default_policy_dir
from enforcer.policy import PolicyEngine


def _config(tmp_path: Path) -> HiveConfig:
    return HiveConfig(
        run_dir=tmp_path / "run", state_dir=tmp_path / "state", core=CoreConfig(gateway_uid=0)
    )


async def _nothing(request: web.Request) -> web.Response:
    return web.Response()


def _apps(config: HiveConfig) -> dict[str, tuple[str, web.Application]]:
    return {d: (ch, app) for d, ch, app in daemon_apps(config, PolicyEngine(config.policy_dir))}


def _enforcer(channel: str) -> authz.Enforcer:
    """An enforcer to bind with, as every daemon binds its routes."""
    return authz.Enforcer(
        engine=PolicyEngine(default_policy_dir()), channel=channel, principal_of=lambda _r: "x"
    )


def _facts(apps: dict[str, tuple[str, web.Application]]) -> list[RouteFact]:
    out: list[RouteFact] = []
    for daemon, (channel, app) in apps.items():
        out += app_routes(app, daemon, channel)
    return out + priv_routes()


def test_the_real_daemons_bind_every_route_to_a_fitting_action(tmp_path: Path) -> None:
    config = _config(tmp_path)
    facts = gather_routes(config)
    daemons = {f.daemon for f in facts}
    assert daemons == {"core (core.sock)", "core (agent sockets)", "gateway", "hive-priv"}
    report = build_report(AuditOptions(config, default_policy_dir()))
    for check_id in ("routes.bound", "routes.known", "routes.agent-socket", "routes.channel"):
        assert report.check(check_id).status.value == "pass", check_id
    assert report.exit_code == 0
    assert not (tmp_path / "run").exists(), "introspection binds and creates nothing"


def test_a_route_without_an_action_is_a_finding(tmp_path: Path) -> None:
    config = _config(tmp_path)
    apps = _apps(config)
    _, gateway_app = apps["gateway"]
    gateway_app.router.add_get("/sneaky", _nothing)  # not through an enforcer
    report = build_report(AuditOptions(config, default_policy_dir()), route_facts=_facts(apps))
    bound = report.check("routes.bound")
    assert bound.failed
    # add_get also adds a HEAD route behind one's back: both are unbound.
    assert sorted(f.where for f in bound.findings) == [
        "gateway: GET /sneaky",
        "gateway: HEAD /sneaky",
    ]
    assert report.exit_code == 1


def test_an_operator_action_on_an_agent_socket_is_a_finding(tmp_path: Path) -> None:
    config = _config(tmp_path)
    apps = _apps(config)
    _, agent_app = apps["core (agent sockets)"]
    _enforcer("socket").bind(
        agent_app, "POST", "/v1/answer", _nothing, action="question.answer", resource="question:1"
    )
    report = build_report(AuditOptions(config, default_policy_dir()), route_facts=_facts(apps))
    socket_check = report.check("routes.agent-socket")
    assert socket_check.failed
    (finding,) = socket_check.findings
    assert finding.where == "core (agent sockets): POST /v1/answer"
    assert "operator-class action question.answer" in finding.what
    assert report.exit_code == 1


def test_an_action_missing_from_the_catalogue_is_a_finding(tmp_path: Path) -> None:
    config = _config(tmp_path)
    apps = _apps(config)
    _, core_app = apps["core (core.sock)"]
    _enforcer("gateway").bind(
        core_app, "GET", "/api/secret", _nothing, action="secret.read", resource="x"
    )
    report = build_report(AuditOptions(config, default_policy_dir()), route_facts=_facts(apps))
    known = report.check("routes.known")
    assert [f.where for f in known.findings] == ["core (core.sock): GET /api/secret"]


def test_every_hive_priv_request_type_is_a_system_action_on_priv() -> None:
    facts = priv_routes()
    assert facts
    assert all(f.channel == "priv" and f.action and f.action.startswith("priv.") for f in facts)
