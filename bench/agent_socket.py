"""Agent socket: full enforcement + decision logging vs a bare aiohttp handler.

Both servers run in this process, each on a unix socket in the same temporary
directory; the load comes from a separate client process (raw HTTP/1.1 over
keep-alive connections, so the client costs the same for both), in short
windows alternating between the two (the order flipped every round), so that
a noisy neighbour on a shared machine weighs on both alike. Measured:

- req/s, p50 and p99 latency of ``GET /v1/whoami`` on an agent socket of the
  real core - its enforcer on every request: the principal from the transport
  (the connection's ``SO_PEERCRED`` read once per connection, the agent's
  registration checked per request), the raw-path check, the resource, the
  policy verdict (cached per policy version and, for resources that follow
  from the path, per raw target), one JSON decision line written
  with its own ``write(2)`` before the handler runs, the decision ring - and of
  a bare aiohttp handler returning the same body;
- the ratio (target >= 0.9): the median of the per-round ratios, and what
  enforcement costs per request in microseconds;
- RSS and open file descriptors of the core with 1000 registered agent sockets.

``--quick`` finishes in well under a minute. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

HERE = Path(__file__).resolve()
REQUEST = b"GET /v1/whoami HTTP/1.1\r\nHost: agent\r\n\r\n"


# --- client (runs in its own process) -----------------------------------------------


async def _client_conn(path: str, deadline: float, lat: list[float] | None) -> int:
    reader, writer = await asyncio.open_unix_connection(path)
    n = 0
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:100].decode(errors="replace"))
            if lat is not None:
                lat.append(time.perf_counter() - t0)
            n += 1
    finally:
        writer.close()
    return n


async def _window(path: str, seconds: float, conns: int, lat: list[float]) -> float:
    """req/s over one window of ``conns`` keep-alive connections (after a short warm-up)."""
    await asyncio.gather(
        *(_client_conn(path, time.perf_counter() + 0.05, None) for _ in range(conns))
    )
    start = time.perf_counter()
    counts = await asyncio.gather(*(_client_conn(path, start + seconds, lat) for _ in range(conns)))
    return sum(counts) / (time.perf_counter() - start)


def _summary(rps: list[float], lat: list[float]) -> dict[str, float]:
    lat.sort()
    return {
        "rps": statistics.median(rps),
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
        "windows": float(len(rps)),
    }


async def _client(paths: list[str], windows: int, seconds: float, conns: int) -> dict[str, Any]:
    """Alternate short windows between the targets (order flipped every round), so that
    a noisy neighbour hits both alike; ratios are taken per round, then their median."""
    rps: list[list[float]] = [[] for _ in paths]
    lat: list[list[float]] = [[] for _ in paths]
    for k in range(windows):
        order = range(len(paths)) if k % 2 == 0 else reversed(range(len(paths)))
        for i in order:
            rps[i].append(await _window(paths[i], seconds, conns, lat[i]))
    return {
        "sides": [_summary(r, l_) for r, l_ in zip(rps, lat, strict=True)],
        "ratios": [statistics.median(x / b for b, x in zip(rps[0], r, strict=True)) for r in rps],
    }


def _load(paths: list[str], windows: int, seconds: float, conns: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.agent_socket",
            "--client",
            ",".join(paths),
            str(windows),
            str(seconds),
            str(conns),
        ],
        cwd=HERE.parents[1],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- servers -----------------------------------------------------------------------------


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _bench(windows: int, seconds: float, conns: int, agents: int) -> dict[str, Any]:
    from enforcer.config import CoreConfig, HiveConfig
    from enforcer.core import create_app, serve
    from enforcer.log import configure_logging
    from enforcer.operator_api import register_agent

    base = Path(tempfile.mkdtemp(prefix="hbb-", dir="/tmp"))
    # The decision log is rendered and written, to nowhere.
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230
    configure_logging(devnull)
    config = HiveConfig(
        run_dir=base / "run",
        state_dir=base / "state",
        core=CoreConfig(gateway_uid=os.getuid()),
    )
    app = create_app(config)
    runner = await serve(config, app)
    bare_runner: web.AppRunner | None = None
    try:
        from enforcer.corestate import CORE

        core = app[CORE]
        await register_agent(core, "bench", os.getuid(), ())
        agent_sock = str(config.agent_socket("bench"))

        # The bare handler returns the very body the core returns.
        body = json.dumps({"agent": "bench", "principal": "agent:bench", "uid": os.getuid()})

        async def bare(request: web.Request) -> web.Response:
            return web.Response(text=body, content_type="application/json")

        bare_app = web.Application()
        bare_app.router.add_get("/v1/whoami", bare)
        # No access logger, as the core's runner has none: same work outside the handler.
        bare_runner = web.AppRunner(bare_app, handle_signals=False, access_log=None)
        await bare_runner.setup()
        bare_sock = str(base / "bare.sock")
        await web.UnixSite(bare_runner, bare_sock).start()

        loop = asyncio.get_running_loop()
        paired = await loop.run_in_executor(
            None, _load, [bare_sock, agent_sock], windows, seconds, conns
        )
        bare_r, full_r = paired["sides"]
        ratio = paired["ratios"][1]

        rss0, fds0 = _rss_kib(), _fds()
        t0 = time.perf_counter()
        for i in range(agents):
            await register_agent(core, f"a{i}", os.getuid(), ())
        reg_s = time.perf_counter() - t0
        rss1, fds1 = _rss_kib(), _fds()
        # One of the many sockets still answers at full speed.
        last_sock = str(config.agent_socket(f"a{agents - 1}"))
        last = await loop.run_in_executor(None, _load, [last_sock], 2, seconds, conns)
    finally:
        if bare_runner is not None:
            await bare_runner.cleanup()
        await runner.cleanup()
        devnull.close()
        shutil.rmtree(base, ignore_errors=True)
    return {
        "bare": bare_r,
        "full": full_r,
        "ratio": ratio,
        "cost_us": 1e6 / full_r["rps"] - 1e6 / bare_r["rps"],
        "agents": agents,
        "register_seconds": reg_s,
        "rss_kib_before": rss0,
        "rss_kib_after": rss1,
        "rss_kib_per_agent": (rss1 - rss0) / agents,
        "fds_before": fds0,
        "fds_after": fds1,
        "fds_per_agent": (fds1 - fds0) / agents,
        "last_agent_rps": last["sides"][0]["rps"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--client``, be the load generator)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (< 1 minute)")
    parser.add_argument(
        "--client",
        nargs=4,
        metavar=("SOCKS", "WINDOWS", "SECONDS", "CONNS"),
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--agents", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.client:
        paths, windows, seconds, conns = args.client
        result = asyncio.run(_client(paths.split(","), int(windows), float(seconds), int(conns)))
        print(json.dumps(result))
        return 0
    import resource

    # One listening fd per agent socket: allow more than the usual 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.agents + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    windows, seconds = (16, 0.5) if args.quick else (40, 1.0)
    r = asyncio.run(_bench(windows, seconds, 8, args.agents))
    print(f"{windows} rounds of {seconds:g} s windows, bare and full alternating:")
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for label, key in (("bare aiohttp handler", "bare"), ("full enforcement", "full")):
        row = r[key]
        print(f"{label:24}{row['rps']:>10.0f}{row['p50_ms']:>10.3f}{row['p99_ms']:>10.3f}")
    print(
        f"ratio full/bare: {r['ratio']:.3f} (target >= 0.9; median of per-round ratios); "
        f"enforcement costs {r['cost_us']:.1f} us per request"
    )
    print(
        f"{r['agents']} agent sockets: registered in {r['register_seconds']:.1f} s; "
        f"RSS {r['rss_kib_before'] / 1024:.1f} -> {r['rss_kib_after'] / 1024:.1f} MiB "
        f"({r['rss_kib_per_agent']:.1f} KiB/agent); fds {r['fds_before']} -> {r['fds_after']} "
        f"({r['fds_per_agent']:.2f}/agent); last agent {r['last_agent_rps']:.0f} req/s"
    )
    print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    # Run as a script, this file's directory comes first on sys.path, where
    # bench/netns.py would shadow the netns package: use the repository root.
    sys.path[0] = str(HERE.parents[1])
    sys.exit(main())
