"""A policy file replaced by garbage, truncated mid-write, or made unreadable while
agents are under load: every request is still decided by the last good policy
(never by the broken one, never by none), the refusal is logged by the core and
shown by ``GET /api/policy`` (``last_refusal``), and a repaired policy loads.

The real core and gateway run as subprocesses (:class:`bench.load.Daemons`);
the operator reloads through the gateway, as the web UI does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from bench.load import Daemons, RawConn, bench_policy_dir, read_decisions
from enforcer.policy import AccessRequest, load_policy

AGENTS = ["r0", "d1", "r2", "d3"]


def _garbage(p: Path) -> None:
    p.write_bytes(b"\x00\xff garbage \xfe\n p, ,,, \n" + os.urandom(64))


def _truncated_mid_line(p: Path) -> None:
    # A writer that died half way: the file ends in the middle of a grant line.
    text = p.read_text()
    cut = text.index("p, role:reporter, socket") + len("p, role:reporter, soc")
    with p.open("r+") as f:
        f.truncate(cut)


def _not_utf8(p: Path) -> None:
    p.write_bytes(p.read_bytes() + b"\n# \xc3\x28 broken utf-8\n")


def _a_directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


def _missing(p: Path) -> None:
    p.unlink()


def _unreadable(p: Path) -> None:
    # Root reads a 0000 file anyway (the core runs as root here): a dangling
    # symlink is unreadable for everyone.
    p.unlink()
    p.symlink_to(p.parent / "nowhere" / "policy.csv")


FAULTS: list[tuple[str, str, Callable[[Path], None]]] = [
    ("garbage", "policy.csv", _garbage),
    ("truncated mid-write", "policy.csv", _truncated_mid_line),
    ("invalid UTF-8", "catalogue.toml", _not_utf8),
    ("a directory", "model.conf", _a_directory),
    ("missing", "tests.toml", _missing),
    ("unreadable", "policy.csv", _unreadable),
]


async def _load(d: Daemons, stop: asyncio.Event, policy: object, wrong: list[str]) -> int:
    """Every agent cycles whoami / status report; each answer is checked against ``policy``."""
    count = 0

    async def agent(name: str) -> None:
        nonlocal count
        conn = RawConn(str(d.config.agent_socket(name)))
        try:
            while not stop.is_set():
                status_body = b'{"state":"x"}'
                for method, target, body, action, res, ok in (
                    ("GET", "/v1/whoami", b"", "agent.whoami", f"agent:{name}", 200),
                    ("POST", "/v1/status", status_body, "status.report", f"agent:{name}/status", 200),  # noqa: E501
                ):  # fmt: skip
                    status, data = await conn.request(method, target, body)
                    allowed = policy.decide(  # type: ignore[attr-defined]
                        AccessRequest(f"agent:{name}", "socket", res, action)
                    ).allowed
                    count += 1
                    if status != (ok if allowed else 403):
                        wrong.append(f"{name} {target} {status} {data[:100]!r}")
        finally:
            await conn.close()

    await asyncio.gather(*(agent(n) for n in AGENTS))
    return count


async def _scenario(d: Daemons) -> None:
    assert d.policy_dir is not None
    good = load_policy(d.policy_dir)
    pristine = d.base / "pristine"
    shutil.copytree(d.policy_dir, pristine)
    op, csrf = await d.operator()
    post = {"X-CSRF-Token": csrf, "Origin": d.origin}
    try:
        for name in AGENTS:
            async with op.post(d.url + "/api/agents", json={"name": name, "uid": os.getuid()},
                               headers=post) as r:  # fmt: skip
                assert r.status == 201, await r.text()
        stop = asyncio.Event()
        wrong: list[str] = []
        load = asyncio.create_task(_load(d, stop, good, wrong))
        for label, filename, fault in FAULTS:
            target = d.policy_dir / filename
            fault(target)
            await asyncio.sleep(0.2)  # requests keep coming while the file is broken
            async with op.post(d.url + "/api/policy/reload", headers=post) as r:
                body = await r.json()
                assert r.status == 409, (label, body)
                assert body["ok"] is False, (label, body)
                assert body["revision"] == good.revision, (label, body)
                assert filename in body["error"], (label, body["error"])
            async with op.get(d.url + "/api/policy") as r:
                shown = await r.json()
                assert shown["revision"] == good.revision
                assert shown["last_refusal"] is not None
                assert filename in shown["last_refusal"]["reason"], (label, shown)
            await asyncio.sleep(0.2)
            # Repair (the file as it was) before the next fault.
            if target.is_dir() and not target.is_symlink():
                target.rmdir()
            elif target.exists() or target.is_symlink():
                target.unlink()
            shutil.copy(pristine / filename, target)
        # A good new version is taken again: the engine was never stuck.
        bench_policy_dir(d.policy_dir, [n for n in AGENTS if n.startswith("r")], "repaired")
        async with op.post(d.url + "/api/policy/reload", headers=post) as r:
            body = await r.json()
            assert r.status == 200, body
            assert body["ok"] is True, body
            assert body["revision"] != good.revision
        await asyncio.sleep(0.2)
        stop.set()
        answered = await load
        assert answered > 100
        assert wrong == [], wrong[:5]
    finally:
        await op.close()


def test_a_broken_policy_file_under_load_is_refused_and_the_last_good_one_decides() -> None:
    with Daemons() as d:
        assert d.policy_dir is not None
        bench_policy_dir(d.policy_dir, [n for n in AGENTS if n.startswith("r")])
        d.start_core()
        d.start_gateway()
        asyncio.run(_scenario(d))
        d.stop_core()
        log = [
            json.loads(line) for line in d.core_log.read_text().splitlines() if line.startswith("{")
        ]
        refused = [e for e in log if e.get("event") == "policy.refused"]
        assert len(refused) == len(FAULTS)
        for event, (_, filename, _) in zip(refused, FAULTS, strict=True):
            assert filename in event["reason"]
        good_revisions = {e["revision"] for e in log if e.get("event") == "policy.loaded"}
        # Every decision the core logged was made by a policy it loaded - never "none".
        decisions = read_decisions(d.core_log)
        assert decisions
        assert {e["revision"] for e in decisions} <= good_revisions
