"""The core daemon: the operator surface on ``core.sock`` and one socket per agent.

:func:`create_app` returns the operator application (channel ``gateway``). Its
``cleanup_ctx`` opens the store and the event hub, then starts the agent
surface (:mod:`enforcer.agent_api`, channel ``socket``) on its own runner with
one ``SockSite`` per registered agent, so that::

    web.run_app(create_app(config), path=str(config.core_socket))

serves everything. Both applications check their route tables against the
catalogue at start-up (an unbound route is a start-up error) and are frozen
once started. :func:`run` is the ``hive-boundary core`` entry point: it binds
``core.sock`` (mode 0660) itself and serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from enforcer import agent_api, authz, operator_api, serving
from enforcer.config import HiveConfig, load_config
from enforcer.corestate import CORE, CoreState, EventHub, Instrument
from enforcer.errors import HiveError
from enforcer.lifecycle import LifecycleBackend, LocalProcessBackend
from enforcer.log import configure_logging, get_logger
from enforcer.policy import PolicyEngine
from enforcer.store import Store
from enforcer.transport import (
    AgentSites,
    LocalSocketProvider,
    SocketProvider,
    bind_unix_socket,
    core_principal,
)
from webui import pages as webui_pages

__all__ = ["add_arguments", "create_app", "run", "serve"]


def create_app(
    config: HiveConfig,
    *,
    engine: PolicyEngine | None = None,
    backend: LifecycleBackend | None = None,
    provider: SocketProvider | None = None,
    instrument: Instrument | None = None,
) -> web.Application:
    """The core's operator application; starting it also starts every agent socket.

    ``backend`` defaults to :class:`LocalProcessBackend`, ``provider`` to
    :class:`LocalSocketProvider` - or, with ``[core] backend = "priv"``, both to
    hive-priv's (:mod:`enforcer.priv_backend`); ``instrument`` wraps every handler of both
    surfaces with its action name (metrics, and tests that count calls).
    """
    if config.core.backend == "priv" and (backend is None or provider is None):
        # Containers and agent sockets come from hive-priv (priv.sock).
        from enforcer.priv_backend import priv_components

        priv_backend, priv_provider = priv_components(config)
        backend = backend or priv_backend
        provider = provider or priv_provider
    core = CoreState(
        config=config,
        engine=engine or PolicyEngine(config.policy_dir),
        backend=backend or LocalProcessBackend(config),
        provider=provider or LocalSocketProvider(),
        instrument=instrument,
    )
    # No middleware: every route is enforced by this one Enforcer (see authz).
    app = web.Application(client_max_size=config.core.max_body_bytes)
    enforcer = authz.Enforcer(
        engine=core.engine,
        channel="gateway",
        principal_of=core_principal(config.resolved_gateway_uid()),
        on_decision=core.decision_ring.append,
    )
    app[CORE] = core
    for route in operator_api.ROUTES:
        handler = route.handler
        if instrument is not None:
            handler = instrument(route.action, handler)
        enforcer.bind(
            app, route.method, route.path, handler, action=route.action, resource=route.resource
        )
    # The operator's pages (webui): rendered here, the trusted side, and reached
    # through the gateway like the API; every page route is bound by the enforcer.
    webui_pages.setup(app, enforcer)
    enforcer.install(app)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_agent_sockets_ctx)
    app.cleanup_ctx.append(_publish_policy_ctx)
    return app


async def _publish_policy_ctx(app: web.Application) -> AsyncIterator[None]:
    """At start-up, publish the live policy revision (the gateway's workers follow it)."""
    core = app[CORE]
    core.config.run_dir.mkdir(parents=True, exist_ok=True)
    operator_api.publish_live_revision(core)
    yield


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    core = app[CORE]
    limits = core.config.core
    core.store = await asyncio.to_thread(
        Store,
        core.config.database,
        max_journal_rows=limits.max_journal_rows_per_agent,
        max_journal_bytes=limits.max_journal_bytes_per_agent,
    )
    core.hub = EventHub()
    try:
        yield
    finally:
        core.hub.close()
        core.store.close()


async def _agent_sockets_ctx(app: web.Application) -> AsyncIterator[None]:
    """Serve the agent surface: one runner, one site per registered agent."""
    core = app[CORE]
    log = get_logger("enforcer.core")
    agent_app = agent_api.create_agent_app(core)
    # Shutdown waits for in-flight long polls only briefly: they are read-only.
    # No access log: every request's decision line is the agent surface's log.
    # Bodies as sent: no request body is inflated (Content-Encoding is not taken).
    # What aiohttp's parser refuses gets a logged JSON refusal, not aiohttp's page.
    runner = serving.HiveRunner(
        agent_app,
        channel="socket",
        handle_signals=False,
        shutdown_timeout=1.0,
        access_log=None,
        auto_decompress=False,
    )
    await runner.setup()  # runs check_routes(channel="socket") and freezes the app
    core.agent_app = agent_app
    core.config.agent_socket_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    core.sites = AgentSites(runner, core.registry, core.provider, core.config.agent_socket)
    try:
        for agent in core.db.agents():
            try:
                await core.backend.create(agent)
                await core.sites.add(agent.name, agent.uid)
            except Exception as e:  # one broken agent must not keep the others down
                log.error("agent.socket_failed", agent=agent.name, error=str(e))
        yield
    finally:
        await core.sites.close()
        await runner.cleanup()
        await core.backend.close()


async def serve(config: HiveConfig, app: web.Application | None = None) -> web.AppRunner:
    """Start the core on ``config.core_socket`` (0660); returns the runner to clean up."""
    app = app or create_app(config)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0, auto_decompress=False)
    await runner.setup()
    config.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        sock = bind_unix_socket(config.core_socket, mode=0o660, uid=None)
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _raise_fd_limit() -> None:
    """Use the hard file limit (at most 65536): every agent connection is a descriptor.

    Agents' connections all together stay below the limit anyway
    (:class:`enforcer.transport.AgentSites`); the higher it is, the more agents
    can hold long polls before any is refused.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hive-boundary core``."""
    parser.add_argument("--config", type=Path, help="hive.toml (default /etc/hive/hive.toml)")


def run(config: HiveConfig | argparse.Namespace) -> int:
    """``hive-boundary core``: serve until SIGINT/SIGTERM; exit code.

    Takes a :class:`HiveConfig`, or the parsed ``hive-boundary core``
    arguments (the daemons' dispatch table calls ``run(args)``).
    """
    configure_logging()
    if isinstance(config, argparse.Namespace):
        try:
            config = load_config(config.config)
            config.resolved_gateway_uid()
        except HiveError as e:
            print(f"hive-boundary core: {e.reason}", file=sys.stderr)
            return 2
    cfg = config
    log = get_logger("enforcer.core")
    _raise_fd_limit()

    async def main() -> None:
        runner = await serve(cfg)
        log.info("core.started", socket=str(cfg.core_socket), pid=os.getpid())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                cfg.core_socket.unlink()
            log.info("core.stopped")

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    # `python -m enforcer.core --config F`: the same as `hive-boundary core`.
    _parser = argparse.ArgumentParser(prog="hive-boundary core")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
