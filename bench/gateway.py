"""Gateway throughput: our gateway against a bare aiohttp proxy and nginx, same run.

One backend (a tiny aiohttp app answering ``GET /api/ping`` with a small JSON
body, on 127.0.0.1 TCP *and* on a unix socket standing in for core.sock) and
five ways to reach it, each loaded by ``wrk`` (Debian) with the same
connections and duration, on loopback only:

- ``direct``        wrk -> backend (TCP)
- ``aiohttp_bare``  wrk -> a minimal aiohttp proxy -> backend (unix socket)
- ``gateway``       wrk -> our gateway with full enforcement (raw-path check,
                    session lookup, policy decision, one JSON decision log line,
                    header stripping, streaming proxy, security headers) -> backend
- ``nginx``         wrk -> nginx ``proxy_pass`` (keep-alive upstream) -> backend
- ``nginx_auth``    wrk -> nginx ``auth_request`` to a small aiohttp authoriser
                    (session lookup + the same policy decision) -> backend

Every server runs in its own process. The gateway runs as in production:
``python -m enforcer.cli gateway`` with ``[gateway] workers`` processes
(default: the production default, one per CPU; ``--workers`` to change),
its decision log on stderr into a file, and the bench logs in through
``POST /login`` with the operator token the gateway generated, like a
browser. The nginx authoriser checks that same cookie with the gateway's
shared session key (``STATE/gateway/session-key``). The bare proxy, the
authoriser, the backend and nginx (``worker_processes 1``) use one process
each. nginx runs from a temporary prefix with its own pid, log and temp
paths; every server is stopped by its PID.

Targets: gateway >= 0.9x aiohttp_bare and >= 1.0x nginx_auth; the ratio to
plain nginx is reported. Beside req/s and latency, each row gives the CPU per
request of its proxying tier (the gateway's supervisor and workers; nginx and
the authoriser for nginx_auth) and of the backend, read from /proc around the
measured run: on 2 shared cores, req/s follows from how much CPU each tier
spends per request. Prints a table; the last line is one JSON object.

    .venv/bin/python -m bench.gateway [--quick] [--workers N]
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
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


def _authoriser(args: argparse.Namespace) -> None:
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
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


SERVERS = {
    "backend": _backend,
    "bare": _bare_proxy,
    "authoriser": _authoriser,
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
    location = /_auth {{
      internal;
      proxy_pass http://authoriser/auth;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location / {{
      auth_request /_auth;
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
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
) -> Result:
    """One wrk run, with the CPU its proxying tier (``tier`` pids) and the backend spent."""
    before = sum(_cpu_seconds(pid) for pid in tier), _cpu_seconds(backend)
    result = _wrk(name, port, duration, connections, cookie)
    after = sum(_cpu_seconds(pid) for pid in tier), _cpu_seconds(backend)
    if result.requests:
        result.proxy_cpu_us = 1e6 * (after[0] - before[0]) / result.requests
        result.backend_cpu_us = 1e6 * (after[1] - before[1]) / result.requests
    return result


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
    parser.add_argument("--duration", type=int, default=None, help="seconds per target")
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
    duration = args.duration or (5 if args.quick else 15)
    from enforcer.config import GatewayConfig

    workers = args.workers if args.workers is not None else GatewayConfig().workers

    tmp = Path(tempfile.mkdtemp(prefix="hbb-", dir="/tmp"))
    tmp.chmod(0o755)  # nginx's unprivileged worker must reach the backend's socket
    (tmp / "run").mkdir()
    (tmp / "state").mkdir()
    sock = str(tmp / "run" / "core.sock")
    ports = {k: _free_port() for k in ("backend", "bare", "gateway", "auth", "nginx", "nginx_a")}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(kind: str, port: int, *extra: str) -> None:
        cmd = [sys.executable, "-m", "bench.gateway", "--serve", kind, "--port", str(port)]
        cmd += ["--socket", sock, "--dir", str(tmp), *extra]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

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
        token = (tmp / "state" / "operator-token").read_text().strip()
        session = _login(ports["gateway"], token)
        spawn("authoriser", ports["auth"])
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp,
                sock=sock,
                auth_port=ports["auth"],
                plain_port=ports["nginx"],
                auth_request_port=ports["nginx_a"],
            )
        )
        nginx = subprocess.Popen(
            ["nginx", "-p", str(tmp), "-e", str(tmp / "nginx-error.log"), "-c", str(conf),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(nginx)
        for key in ("bare", "gateway", "auth", "nginx", "nginx_a"):
            _wait_port(ports[key])
        backend, bare, gateway, authoriser = (p.pid for p in procs[:4])
        # Each target's proxying tier: the processes whose CPU it adds to the backend's.
        targets: list[tuple[str, int, str | None, list[int]]] = [
            ("direct", ports["backend"], None, []),
            ("aiohttp_bare", ports["bare"], None, [bare]),
            ("gateway", ports["gateway"], session, [gateway]),
            ("nginx", ports["nginx"], None, [nginx.pid]),
            ("nginx_auth", ports["nginx_a"], session, [nginx.pid, authoriser]),
        ]
        for _, port, cookie, _ in targets:
            _check(port, cookie)
        results = []
        for name, port, cookie, tier in targets:
            _wrk(name, port, 1, args.connections, cookie)  # warm-up
            results.append(_measured(name, port, duration, args.connections, cookie, tier, backend))
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
        return round(gw / by_name[other].rps, 3) if by_name[other].rps else 0.0

    print(f"wrk -t1 -c{args.connections} -d{duration}s {PATH}; gateway workers: {workers}")
    print(
        f"{'target':<14}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'gw ratio':>10}"
        f"{'proxy cpu us/req':>18}{'backend us/req':>16}"
    )
    for r in results:
        print(
            f"{r.name:<14}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.non_2xx:>9}"
            f"{gw / r.rps if r.rps else 0:>10.2f}{r.proxy_cpu_us:>18.1f}{r.backend_cpu_us:>16.1f}"
        )
    print(
        "  proxy cpu: CPU per request of the proxying tier (gateway: supervisor + workers;"
        " nginx_auth: nginx + the authoriser); all share 2 cores with wrk and the backend"
    )
    ratios = {
        "gateway_vs_aiohttp_bare": ratio("aiohttp_bare"),
        "gateway_vs_nginx_auth": ratio("nginx_auth"),
        "gateway_vs_nginx": ratio("nginx"),
        "aiohttp_bare_vs_nginx": round(by_name["aiohttp_bare"].rps / by_name["nginx"].rps, 3)
        if by_name["nginx"].rps
        else 0.0,
    }
    targets_met = {
        "gateway_ge_0.9x_aiohttp_bare": ratios["gateway_vs_aiohttp_bare"] >= 0.9,
        "gateway_ge_1.0x_nginx_auth": ratios["gateway_vs_nginx_auth"] >= 1.0,
    }
    for key, value in {**ratios, **targets_met}.items():
        print(f"  {key}: {value}")
    print(
        json.dumps(
            {
                "bench": "gateway",
                "duration_s": duration,
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
