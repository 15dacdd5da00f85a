"""The request layer of the audit: every route of every daemon against the catalogue.

Introspected from the real application objects, the ones the daemons serve:
:func:`daemon_apps` builds the core's operator application, its agent
application and the gateway application with their own ``create_app``
builders (nothing is started or bound: the route tables exist as soon as the
builders return), and :func:`priv_routes` reads hive-priv's request table.

:func:`judge_routes` is pure: every route bound, to a catalogue action, of an
authority class that belongs on the daemon's channel
(:data:`enforcer.authz.CHANNEL_CLASSES`: only agent-self actions on an agent
socket, so an operator action with an agent-socket route is a finding), and a
hive-priv request's resource pattern equal to its action's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

from enforcer import agent_api, authz, core, gateway, priv_protocol
from enforcer.audit.report import AuditError, Check, Finding, Section, Table, check
from enforcer.config import HiveConfig
from enforcer.corestate import CORE
from enforcer.errors import HiveError
from enforcer.policy import ActionSpec, PolicyEngine

__all__ = [
    "RouteFact",
    "app_routes",
    "daemon_apps",
    "gather_routes",
    "judge_routes",
    "priv_routes",
    "routes_section",
]


@dataclass(frozen=True, slots=True)
class RouteFact:
    """One entry point of one daemon and the action it is bound to (None: unbound)."""

    daemon: str
    channel: str
    method: str
    path: str
    action: str | None
    resource_pattern: str | None = None  # hive-priv requests declare theirs

    @property
    def where(self) -> str:
        """``daemon: METHOD /path``."""
        return f"{self.daemon}: {self.method} {self.path}"


def app_routes(app: web.Application, daemon: str, channel: str) -> list[RouteFact]:
    """Every route of ``app`` (and its sub-applications) with its bound action."""
    out = []
    for route, binding in authz.route_bindings(app):
        path = route.resource.canonical if route.resource is not None else "?"
        out.append(
            RouteFact(daemon, channel, route.method, path, binding.action if binding else None)
        )
    return out


def priv_routes() -> list[RouteFact]:
    """hive-priv's request types, each with its action and resource pattern."""
    return [
        RouteFact("hive-priv", "priv", "request", name, cls.ACTION or None, cls.RESOURCE)
        for name, cls in sorted(priv_protocol.REQUEST_TYPES.items())
    ]


def daemon_apps(
    config: HiveConfig, engine: PolicyEngine | None = None
) -> list[tuple[str, str, web.Application]]:
    """(daemon, channel, application) for the core's two surfaces and the gateway.

    Built, never started: no socket is bound, no file is opened.
    """
    engine = engine or PolicyEngine(config.policy_dir)
    if config.core.gateway_uid is None:
        # Only the start-up principal check uses it; any uid builds the same routes.
        try:
            uid = config.resolved_gateway_uid()
        except HiveError:
            uid = -1
        config = replace(config, core=replace(config.core, gateway_uid=uid))
    operator_app = core.create_app(config, engine=engine)
    agent_app = agent_api.create_agent_app(operator_app[CORE])
    gateway_app = gateway.create_app(config, engine=engine)
    return [
        ("core (core.sock)", "gateway", operator_app),
        ("core (agent sockets)", "socket", agent_app),
        ("gateway", "gateway", gateway_app),
    ]


def gather_routes(config: HiveConfig) -> list[RouteFact]:
    """Every route of every daemon; :class:`AuditError` if a builder fails."""
    try:
        apps = daemon_apps(config)
    except HiveError as e:
        raise AuditError(f"cannot build the daemons' applications: {e.reason}") from e
    facts: list[RouteFact] = []
    for daemon, channel, app in apps:
        facts += app_routes(app, daemon, channel)
    return facts + priv_routes()


def judge_routes(facts: Iterable[RouteFact], catalogue: Mapping[str, ActionSpec]) -> list[Check]:
    """Bound, known, on the right channel; operator actions nowhere on an agent socket."""
    facts = list(facts)
    unbound: list[Finding] = []
    unknown: list[Finding] = []
    misplaced: list[Finding] = []
    on_socket: list[Finding] = []
    pattern: list[Finding] = []
    for f in facts:
        if f.action is None:
            unbound.append(Finding("no catalogue action bound", f.where))
            continue
        spec = catalogue.get(f.action)
        if spec is None:
            unknown.append(Finding(f"action {f.action!r} is not in the catalogue", f.where))
            continue
        allowed = authz.CHANNEL_CLASSES.get(f.channel, frozenset())
        if spec.authority not in allowed:
            finding = Finding(
                f"{spec.authority.value}-class action {f.action} has no place on the "
                f"{f.channel} channel",
                f.where,
                {"action": f.action, "class": spec.authority.value, "channel": f.channel},
            )
            (on_socket if f.channel == "socket" else misplaced).append(finding)
        if f.resource_pattern is not None and f.resource_pattern != spec.resource:
            pattern.append(
                Finding(
                    f"resource {f.resource_pattern!r} differs from the catalogue's "
                    f"{spec.resource!r} for {f.action}",
                    f.where,
                )
            )
    n = len(facts)
    return [
        check("routes.bound", "every route bound to an action", unbound, ok=f"{n} routes bound"),
        check("routes.known", "every bound action is in the catalogue", unknown, ok="all known"),
        check(
            "routes.agent-socket",
            "agent sockets carry agent-self actions only (no operator entry point)",
            on_socket,
            ok=f"{sum(f.channel == 'socket' for f in facts)} agent-socket routes, all agent-self",
        ),
        check(
            "routes.channel",
            "every action on its class's channel",
            misplaced + pattern,
            ok="every route on its class's channel",
        ),
    ]


def _table(facts: Iterable[RouteFact], catalogue: Mapping[str, ActionSpec]) -> Table:
    rows = []
    for f in facts:
        spec = catalogue.get(f.action) if f.action else None
        rows.append(
            (
                f.daemon,
                f.channel,
                f.method,
                f.path,
                f.action or "(UNBOUND)",
                spec.authority.value if spec else "?",
            )
        )
    return Table(
        "route tables", ("daemon", "channel", "method", "path", "action", "class"), tuple(rows)
    )


def routes_section(facts: list[RouteFact], catalogue: Mapping[str, Any]) -> Section:
    """The route checks and the table of every route."""
    return Section(
        "routes",
        "Routes (every daemon, introspected)",
        tuple(judge_routes(facts, catalogue)),
        (_table(facts, catalogue),),
    )
