"""Gateway throughput: our gateway against a bare aiohttp proxy and nginx, same run.

One backend (a tiny aiohttp app answering ``GET /api/ping`` with a small JSON
body, on 127.0.0.1 TCP *and* on a unix socket standing in for core.sock) and
six ways to reach it, each loaded by ``wrk`` (Debian) with the same
connections and window, on loopback only:

- ``direct``        wrk -> backend (TCP)
- ``aiohttp_bare``  wrk -> a minimal aiohttp proxy -> backend (unix socket)
- ``gateway``       wrk -> our gateway with full enforcement (raw-path check,
                    session lookup, policy decision, one JSON decision log line,
                    header stripping, streaming proxy, security headers) -> backend
- ``nginx``         wrk -> nginx ``proxy_pass`` (keep-alive upstream) -> backend
- ``nginx_auth``    wrk -> nginx ``auth_request`` to a small aiohttp authoriser
                    (session lookup + the same policy decision) -> backend
- ``nginx_auth_full`` the same, with the gateway's duties: the authoriser runs the
                    gateway's own enforcer (request id, raw-target check, session,
                    decision, one decision log line into a file) and nginx strips
                    identity headers, forwards the principal and adds the
                    gateway's security headers. It shows what those duties cost
                    the nginx shape; the target is judged against ``nginx_auth``.

Every server runs in its own process. The gateway runs as in production:
``python -m enforcer.cli gateway`` with ``[gateway] workers`` processes
(default: the production default, one per CPU; ``--workers`` to change),
its decision log on stderr into a file, and the bench logs in through
``POST /login`` with the operator token the gateway generated, like a
browser. The nginx authoriser checks that same cookie with the gateway's
shared session key (``STATE/gateway/session-key``). The bare proxy, each
authoriser, the backend and nginx (``worker_processes 1``) use one process
each; every Python tier runs on uvloop, as the gateway's workers do. nginx
runs from a temporary prefix with its own pid, log and temp paths; every
server is stopped by its PID.

Targets: gateway >= 0.9x aiohttp_bare and >= 1.0x nginx_auth; the ratio to
plain nginx is reported. The three judged targets (gateway, nginx_auth,
aiohttp_bare) are measured in rounds of short wrk runs, taking turns in an
order reversed every round, and each ratio is the median of its per-round
ratios: on a shared host whose speed drifts (the figures in bench/README.md
moved by a quarter within an hour), one run after the other would judge the
drift. The other targets run once. Beside req/s and latency, each row gives the CPU per
request of its proxying tier (the gateway's supervisor and workers; nginx and
the authoriser for nginx_auth) and of the backend, read from /proc around the
measured run: on 2 shared cores, req/s follows from how much CPU each tier
spends per request. Where a tier writes a decision log, the row also counts
the decision lines written during its run against the requests wrk completed
(a few more lines: requests still in flight when wrk stopped). Prints a
table; the last line is one JSON object.

    .venv/bin/python -m bench.gateway [--quick] [--workers N] [--rounds N] [--window S]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["main"]

PATH = "/api/ping"
COOKIE_NAME = "hive_session"


# --- servers (each runs in its own process: `--serve KIND`) ----------------------


def _backend(args: argparse.Namespace) -> None:
    from aiohttp import web

    body = json.dumps({"ok": True, "agents": ["alpha", "beta", "gamma"]}).encode()

    async def ping(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def serve() -> None:
        app = web.Application()
        app.router.add_get(PATH, ping)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", args.port).start()
        await web.UnixSite(runner, args.socket).start()
        # nginx's worker runs unprivileged (www-data): let it connect.
        os.chmod(args.socket, 0o666)
        await asyncio.Event().wait()

    asyncio.run(serve())


def _bare_proxy(args: argparse.Namespace) -> None:
    import aiohttp
    from aiohttp import web

    async def session_ctx(app: web.Application) -> Any:
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=args.socket, limit=256)
        ) as session:
            app["session"] = session
            yield

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method, f"http://backend{request.raw_path}", headers=request.headers
        ) as upstream:
            data = await upstream.read()
            return web.Response(
                body=data, status=upstream.status, content_type=upstream.content_type
            )

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=_loop())


def _loop() -> asyncio.AbstractEventLoop:
    # Every Python tier runs on uvloop, as the gateway's workers do.
    import uvloop

    return uvloop.new_event_loop()


def _authoriser(args: argparse.Namespace) -> None:
    """The minimal authoriser: the session cookie and the policy decision, nothing else."""
    from aiohttp import web

    from enforcer.config import default_policy_dir
    from enforcer.policy import AccessRequest, PolicyEngine
    from enforcer.sessions import SessionStore, session_dir

    engine = PolicyEngine(default_policy_dir())
    # The gateway's own shared session key: the same cookie verifies here.
    store = SessionStore.shared(session_dir(Path(args.dir) / "state"), 3600)

    async def auth(request: web.Request) -> web.Response:
        principal = "operator" if store.get(request.cookies.get(COOKIE_NAME)) else "anonymous"
        decision = engine.decide(AccessRequest(principal, "gateway", "ui", "dashboard.view"))
        return web.Response(status=204 if decision.allowed else 401)

    app = web.Application()
    app.router.add_get("/auth", auth)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=_loop())


def _authoriser_full(args: argparse.Namespace) -> None:
    """The authoriser with the gateway's duties: the gateway's own enforcer on its one route.

    Per request, as the gateway: a request id, the session cookie (the same
    scan and the same shared session store), the client's raw target checked
    (nginx sends it as ``X-Original-URI``), the policy decision, and one JSON
    decision line written to the log (stderr, into a file) before answering.
    nginx then forwards the principal, the request id and the CSRF token to
    the backend, strips identity and forwarding headers, and adds the
    gateway's security headers (``NGINX_CONF``).
    """
    from aiohttp import web

    from enforcer import authz, paths
    from enforcer.config import default_policy_dir
    from enforcer.gateway import _cookie
    from enforcer.log import configure_logging
    from enforcer.policy import PolicyEngine
    from enforcer.sessions import SessionStore, session_dir

    configure_logging()
    engine = PolicyEngine(default_policy_dir())
    store = SessionStore.shared(session_dir(Path(args.dir) / "state"), 3600)
    session_key: web.RequestKey[str] = web.RequestKey("bench_csrf", str)

    def principal_of(request: web.Request) -> str:
        session = store.get(_cookie(request, COOKIE_NAME))
        if session is None:
            return "anonymous"
        request[session_key] = session.csrf_token
        return "operator"

    def original_target(request: web.Request) -> None:
        paths.check_target(request.headers.get("X-Original-URI", ""))

    enforcer = authz.Enforcer(
        engine=engine,
        channel="gateway",
        principal_of=principal_of,
        path_check=paths.check_target,
        guard=original_target,
    )

    async def auth(request: web.Request) -> web.Response:
        headers = {
            "X-Hive-Principal": request[authz.PRINCIPAL],
            "X-Hive-Request-Id": request[authz.REQUEST_ID],
            "X-Hive-CSRF-Token": request.get(session_key, ""),
        }
        return web.Response(status=204, headers=headers)

    app = web.Application()
    enforcer.bind(app, "GET", "/auth", auth, action="dashboard.view", resource="ui")
    enforcer.install(app)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=_loop())


SERVERS = {
    "backend": _backend,
    "bare": _bare_proxy,
    "authoriser": _authoriser,
    "authoriser_full": _authoriser_full,
}


# --- orchestration ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/nginx-body;
  proxy_temp_path {tmp}/nginx-proxy;
  fastcgi_temp_path {tmp}/nginx-fastcgi;
  uwsgi_temp_path {tmp}/nginx-uwsgi;
  scgi_temp_path {tmp}/nginx-scgi;
  upstream backend {{ server unix:{sock}; keepalive 64; }}
  upstream authoriser {{ server 127.0.0.1:{auth_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{plain_port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  server {{
    listen 127.0.0.1:{auth_request_port};
{auth_location_min}    location / {{
      auth_request /_auth;
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  upstream authoriser_full {{ server 127.0.0.1:{auth_full_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{auth_full_request_port};
{auth_location_full}    location / {{
      auth_request /_auth;
      auth_request_set $hive_principal $upstream_http_x_hive_principal;
      auth_request_set $hive_request_id $upstream_http_x_hive_request_id;
      auth_request_set $hive_csrf $upstream_http_x_hive_csrf_token;
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # What the gateway strips (the client's identity and forwarding headers,
      # its credentials) and what it sets for the core.
      proxy_set_header Cookie "";
      proxy_set_header Authorization "";
      proxy_set_header X-CSRF-Token "";
      proxy_set_header Forwarded "";
      proxy_set_header X-Real-IP "";
      proxy_set_header X-Forwarded-For "";
      proxy_set_header X-Forwarded-Host "";
      proxy_set_header X-Forwarded-Proto "";
      proxy_set_header X-Forwarded-Prefix "";
      proxy_set_header X-Hive-Principal $hive_principal;
      proxy_set_header X-Hive-Request-Id $hive_request_id;
      proxy_set_header X-Hive-CSRF-Token $hive_csrf;
      proxy_hide_header Access-Control-Allow-Origin;
      proxy_hide_header Access-Control-Allow-Credentials;
      proxy_hide_header X-Hive-Principal;
      # The gateway's security headers on every answer.
      add_header X-Hive-Request-Id $hive_request_id always;
      add_header X-Content-Type-Options nosniff always;
      add_header Content-Security-Policy "{operator_csp}" always;
      add_header X-Frame-Options SAMEORIGIN always;
      add_header Referrer-Policy same-origin always;
      add_header Cross-Origin-Opener-Policy same-origin always;
      add_header Cross-Origin-Resource-Policy same-origin always;
      add_header Cache-Control no-store always;
    }}
  }}
}}
"""


# The auth subrequest's location, the same for both authorisers but for its upstream.
AUTH_LOCATION = """
    location = /_auth {{
      internal;
      proxy_pass http://{upstream}/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
"""


@dataclass
class Result:
    """One wrk run."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int = 0
    proxy_cpu_us: float = float("nan")  # CPU of the proxying tier per request
    backend_cpu_us: float = float("nan")
    decisions_logged: int | None = None  # decision lines written during the run


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its descendants (Linux /proc)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError, ValueError):
        return total
    return total + sum(_cpu_seconds(int(child)) for child in children)


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _wrk(name: str, port: int, duration: int, connections: int, cookie: str | None) -> Result:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if cookie:
        cmd += ["-H", f"Cookie: {COOKIE_NAME}={cookie}"]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    return Result(
        name,
        float(rps.group(1)) if rps else 0.0,
        _ms(p50.group(1)) if p50 else float("nan"),
        _ms(p99.group(1)) if p99 else float("nan"),
        int(non_2xx.group(1)) if non_2xx else 0,
        int(requests.group(1)) if requests else 0,
    )


def _measured(
    name: str,
    port: int,
    duration: int,
    connections: int,
    cookie: str | None,
    tier: list[int],
    backend: int,
    log: Path | None,
) -> Result:
    """One wrk run, with the CPU its proxying tier (``tier`` pids) and the backend spent.

    With ``log`` (a decision log), also the decision lines written meanwhile.
    """
    lines = _decision_lines(log) if log else 0
    before = sum(_cpu_seconds(pid) for pid in tier), _cpu_seconds(backend)
    result = _wrk(name, port, duration, connections, cookie)
    after = sum(_cpu_seconds(pid) for pid in tier), _cpu_seconds(backend)
    if log:
        result.decisions_logged = _decision_lines(log) - lines
    if result.requests:
        result.proxy_cpu_us = 1e6 * (after[0] - before[0]) / result.requests
        result.backend_cpu_us = 1e6 * (after[1] - before[1]) / result.requests
    return result


JUDGED = ("gateway", "nginx_auth", "aiohttp_bare")
"""The targets the ratios are judged on: measured in alternating rounds."""


def _per_round(rounds: list[list[Result]], other: str) -> list[float]:
    """The gateway's req/s over ``other``'s, round by round."""
    ratios = []
    for results in rounds:
        by_name = {r.name: r for r in results}
        if by_name[other].rps:
            ratios.append(by_name["gateway"].rps / by_name[other].rps)
    return ratios


def _round_ratios(rounds: list[list[Result]]) -> dict[str, float]:
    """The median per-round ratio of the gateway to each other judged target."""
    return {
        other: statistics.median(_per_round(rounds, other)) if _per_round(rounds, other) else 0.0
        for other in JUDGED
        if other != "gateway"
    }


def _combined(
    targets: list[tuple[str, int, str | None, list[int], Path | None]],
    rounds: list[list[Result]],
    others: list[Result],
) -> list[Result]:
    """One row per target, in the targets' order: a judged one's rounds combined.

    req/s and latencies: the median over the rounds; CPU per request, non-2xx,
    requests and decision lines: over all rounds together.
    """
    rows = {r.name: r for r in others}
    for name in JUDGED:
        runs = [r for results in rounds for r in results if r.name == name]
        requests = sum(r.requests for r in runs)
        logged = [r.decisions_logged for r in runs]
        rows[name] = Result(
            name,
            statistics.median(r.rps for r in runs),
            statistics.median(r.p50_ms for r in runs),
            statistics.median(r.p99_ms for r in runs),
            sum(r.non_2xx for r in runs),
            requests,
            sum(r.proxy_cpu_us * r.requests for r in runs) / requests if requests else float("nan"),
            sum(r.backend_cpu_us * r.requests for r in runs) / requests
            if requests
            else float("nan"),
            None if None in logged else sum(x for x in logged if x is not None),
        )
    return [rows[t[0]] for t in targets]


def _decision_lines(log: Path) -> int:
    return log.read_bytes().count(b'"event": "decision"')


def _check(port: int, cookie: str | None) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}")
    if cookie:
        request.add_header("Cookie", f"{COOKIE_NAME}={cookie}")
    with urllib.request.urlopen(request, timeout=5) as resp:
        if resp.status != 200:
            raise RuntimeError(f"127.0.0.1:{port}{PATH} answered {resp.status}")


def _login(port: int, token: str) -> str:
    """Log in as a browser does; the session cookie's value."""
    origin = f"http://127.0.0.1:{port}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = urllib.parse.urlencode({"token": token, "next": "/"})
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin}
        conn.request("POST", "/login", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
    finally:
        conn.close()
    for cookie in cookies:
        name, _, rest = cookie.partition("=")
        if name == COOKIE_NAME:
            return rest.split(";", 1)[0]
    raise RuntimeError(f"login at {origin} gave no session cookie ({resp.status})")


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; print the table and the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (< 1 minute in all)")
    parser.add_argument(
        "--workers", type=int, default=None, help="gateway workers (default: [gateway] default)"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--window", type=int, default=None, help="seconds per wrk run (default 2, or 5)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds of the judged targets (default 5, 9)"
    )
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--socket", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        SERVERS[args.serve](args)
        return 0
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench/gateway: {tool} is not installed (scripts/setup.sh installs it)")
            return 2
    window = args.window or (2 if args.quick else 5)
    rounds_n = args.rounds or (5 if args.quick else 9)
    from enforcer.config import GatewayConfig
    from enforcer.gateway import _OPERATOR_CSP_DEFAULT

    workers = args.workers if args.workers is not None else GatewayConfig().workers

    tmp = Path(tempfile.mkdtemp(prefix="hbb-", dir="/tmp"))
    tmp.chmod(0o755)  # nginx's unprivileged worker must reach the backend's socket
    (tmp / "run").mkdir()
    (tmp / "state").mkdir()
    sock = str(tmp / "run" / "core.sock")
    names = ("backend", "bare", "gateway", "auth", "auth_full", "nginx", "nginx_a", "nginx_af")
    ports = {k: _free_port() for k in names}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(kind: str, port: int, log: Path | None = None) -> None:
        cmd = [sys.executable, "-m", "bench.gateway", "--serve", kind, "--port", str(port)]
        cmd += ["--socket", sock, "--dir", str(tmp)]
        with log.open("wb") if log else open(os.devnull, "wb") as out:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out))

    try:
        spawn("backend", ports["backend"])
        _wait_port(ports["backend"])
        spawn("bare", ports["bare"])
        env = {
            **os.environ,
            "HIVE_RUN_DIR": str(tmp / "run"),
            "HIVE_STATE_DIR": str(tmp / "state"),
            "HIVE_CONFIG": os.devnull,
        }
        with (tmp / "gateway.log").open("wb") as log:  # the decision log, one JSON line each
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "enforcer.cli",
                        "gateway",
                        "--listen",
                        f"127.0.0.1:{ports['gateway']}",
                        "--workers",
                        str(workers),
                    ],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            )
        _wait_port(ports["gateway"])
        token = (tmp / "state" / "gateway" / "operator-token").read_text().strip()
        session = _login(ports["gateway"], token)
        spawn("authoriser", ports["auth"])
        # Its decision log goes to a file, as the gateway's does.
        spawn("authoriser_full", ports["auth_full"], tmp / "authoriser.log")
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp,
                sock=sock,
                auth_port=ports["auth"],
                auth_full_port=ports["auth_full"],
                plain_port=ports["nginx"],
                auth_request_port=ports["nginx_a"],
                auth_full_request_port=ports["nginx_af"],
                operator_csp=_OPERATOR_CSP_DEFAULT,
                auth_location_min=AUTH_LOCATION.format(upstream="authoriser"),
                auth_location_full=AUTH_LOCATION.format(upstream="authoriser_full"),
            )
        )
        nginx = subprocess.Popen(
            ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(nginx)
        for key in ("bare", "gateway", "auth", "auth_full", "nginx", "nginx_a", "nginx_af"):
            _wait_port(ports[key])
        backend, bare, gateway, authoriser, authoriser_full = (p.pid for p in procs[:5])
        # Each target's proxying tier: the processes whose CPU it adds to the backend's.
        gw_log, auth_log = tmp / "gateway.log", tmp / "authoriser.log"
        targets: list[tuple[str, int, str | None, list[int], Path | None]] = [
            ("direct", ports["backend"], None, [], None),
            ("aiohttp_bare", ports["bare"], None, [bare], None),
            ("gateway", ports["gateway"], session, [gateway], gw_log),
            ("nginx", ports["nginx"], None, [nginx.pid], None),
            ("nginx_auth", ports["nginx_a"], session, [nginx.pid, authoriser], None),
            ("nginx_auth_full", ports["nginx_af"], session, [nginx.pid, authoriser_full], auth_log),
        ]
        for _, port, cookie, _, _ in targets:
            _check(port, cookie)
        for name, port, cookie, _, _ in targets:
            _wrk(name, port, 1, args.connections, cookie)  # warm-up
        # The targets the ratios are judged on take turns, round after round,
        # in an order reversed every round: a host that slows down or speeds
        # up meanwhile weighs on each alike. The others run once, in between.
        judged = [t for t in targets if t[0] in JUDGED]
        rounds: list[list[Result]] = []
        others: list[Result] = []
        for i in range(rounds_n):
            order = judged if i % 2 == 0 else judged[::-1]
            rounds.append(
                [
                    _measured(n, port, window, args.connections, cookie, tier, backend, log)
                    for n, port, cookie, tier, log in order
                ]
            )
            if i == 0:
                others = [
                    _measured(n, port, window, args.connections, cookie, tier, backend, log)
                    for n, port, cookie, tier, log in targets
                    if n not in JUDGED
                ]
        results = _combined(targets, rounds, others)
        round_ratios = _round_ratios(rounds)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if proc is not procs[-1] else signal.SIGQUIT)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    by_name = {r.name: r for r in results}
    gw = by_name["gateway"].rps

    def ratio(other: str) -> float:
        if other in round_ratios:  # judged: the median of the per-round ratios
            return round(round_ratios[other], 3)
        return round(gw / by_name[other].rps, 3) if by_name[other].rps else 0.0

    print(
        f"wrk -t1 -c{args.connections} -d{window}s {PATH}; gateway workers: {workers}; "
        f"{', '.join(JUDGED)}: {rounds_n} rounds, order reversed each round (req/s: median; "
        "CPU and decisions: over all rounds); the others once"
    )
    print(
        f"{'target':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'gw ratio':>10}"
        f"{'proxy cpu us/req':>18}{'backend us/req':>16}{'decisions logged':>18}"
    )
    for r in results:
        logged = "-" if r.decisions_logged is None else f"{r.decisions_logged}/{r.requests}"
        print(
            f"{r.name:<16}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>9}"
            f"{gw / r.rps if r.rps else 0:>10.2f}{r.proxy_cpu_us:>18.1f}{r.backend_cpu_us:>16.1f}"
            f"{logged:>18}"
        )
    print(
        "  proxy cpu: CPU per request of the proxying tier (gateway: supervisor + workers;"
        " nginx_auth: nginx + the authoriser); all share 2 cores with wrk and the backend"
    )
    ratios = {
        "gateway_vs_aiohttp_bare": ratio("aiohttp_bare"),
        "gateway_vs_nginx_auth": ratio("nginx_auth"),
        "gateway_vs_nginx_auth_full": ratio("nginx_auth_full"),
        "gateway_vs_nginx": ratio("nginx"),
        "aiohttp_bare_vs_nginx": round(by_name["aiohttp_bare"].rps / by_name["nginx"].rps, 3)
        if by_name["nginx"].rps
        else 0.0,
    }
    per_round = {
        f"gateway_vs_{name}": [round(r, 3) for r in _per_round(rounds, name)]
        for name in JUDGED
        if name != "gateway"
    }
    targets_met = {
        "gateway_ge_0.9x_aiohttp_bare": ratios["gateway_vs_aiohttp_bare"] >= 0.9,
        "gateway_ge_1.0x_nginx_auth": ratios["gateway_vs_nginx_auth"] >= 1.0,
    }
    for key, value in {**ratios, **targets_met}.items():
        print(f"  {key}: {value}")
    for key, values in per_round.items():
        print(f"  {key} per round: {', '.join(f'{v:.3f}' for v in values)}")
    print(
        json.dumps(
            {
                "bench": "gateway",
                "window_s": window,
                "rounds": rounds_n,
                "per_round": per_round,
                "connections": args.connections,
                "gateway_workers": workers,
                "results": {
                    r.name: {
                        "rps": round(r.rps, 1),
                        "p50_ms": r.p50_ms,
                        "p99_ms": r.p99_ms,
                        "non_2xx": r.non_2xx,
                        "proxy_cpu_us": round(r.proxy_cpu_us, 1),
                        "backend_cpu_us": round(r.backend_cpu_us, 1),
                        "decisions_logged": r.decisions_logged,
                        "requests": r.requests,
                    }
                    for r in results
                },
                "ratios": ratios,
                "targets_met": targets_met,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
