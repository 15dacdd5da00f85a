"""Benchmark of the network layer (root; real nftables and namespaces).

- isolation for container #1 vs #1000: the set-element transaction alone
  (fake interface names in the sets; no veths needed for that part);
- rule count vs N (must be constant);
- total bring-up of full containers (namespace + veth + addresses +
  isolation + link up), 100 by default, fewer with ``--quick``.

Usage: ``.venv/bin/python -m bench.netns [--quick]``. Last line: JSON.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from netns import links
from netns.apply import Nft
from netns.manager import NetnsManager
from netns.policy import parse_network_policy
from netns.ruleset import ContainerEntry, compile_ruleset, subjects_for


def _policy(tok: str) -> str:
    a, b = int(tok[:2], 16), int(tok[2:4], 16)
    return (
        f'[addressing]\nipv4 = "10.{100 + a % 100}.0.0/16"\nipv6 = "fd00:{tok}::/64"\n'
        '[[egress]]\nprincipal = "role:agent"\nto = ["0.0.0.0/0", "::/0"]\nports = [80, 443]\n'
        f"# {b}\n"
    )


def _entry(i: int) -> ContainerEntry:
    return ContainerEntry(
        f"c{i}",
        f"zzb{i}",
        ipaddress.IPv4Address(0x0A000002 + 4 * i),
        ipaddress.IPv6Address(f"fd00::{4 * i + 2:x}"),
        subjects_for(f"c{i}", ["agent"]),
    )


def bench_elements(n: int, tok: str) -> dict[str, float]:
    """Time of one container's element transaction when it is #1 and when it is #n."""
    pol = parse_network_policy(_policy(tok))
    mgr = NetnsManager(
        pol,
        table=f"hivebench{tok}",
        prefix=f"hb{tok}-",
        state_path=Path(tempfile.mkdtemp()) / "s.json",
    )
    nft: Nft = mgr.nft
    try:
        mgr.apply()
        first: list[float] = []
        last: list[float] = []
        for i in range(n):
            t = time.perf_counter()
            mgr.add_isolation(_entry(i))
            dt = (time.perf_counter() - t) * 1000
            if i < 5:
                first.append(dt)
            if i >= n - 5:
                last.append(dt)
        live = nft.live()
        assert live is not None
        assert len(live["sets"]["cont_if"]["elements"]) == n
        return {"first_ms": statistics.median(first), "last_ms": statistics.median(last)}
    finally:
        nft.delete_table()


def rule_counts(tok: str) -> dict[int, int]:
    pol = parse_network_policy(_policy(tok))
    return {
        n: len(compile_ruleset(pol, [_entry(i) for i in range(n)]).rules)
        for n in (1, 10, 100, 1000)
    }


def bench_bringup(n: int, tok: str) -> dict[str, float]:
    pol = parse_network_policy(_policy(tok))
    d = Path(tempfile.mkdtemp(prefix="hvb-", dir="/tmp"))
    m = NetnsManager(
        pol, table=f"hivebup{tok}", prefix=f"hb{tok}-", ifprefix=f"b{tok}", state_path=d / "s.json"
    )
    try:
        m.ensure_table()
        per: list[float] = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            m.up(f"a{i}", ["agent"])
            per.append((time.perf_counter() - t) * 1000)
        total = time.perf_counter() - t0
        assert m.drift().in_sync
        t = time.perf_counter()
        m.down_all()
        teardown = time.perf_counter() - t
        return {
            "containers": n,
            "total_s": total,
            "per_container_ms_median": statistics.median(per),
            "per_container_ms_first": per[0],
            "per_container_ms_last": per[-1],
            "teardown_s": teardown,
        }
    finally:
        m.destroy()
        for ns in links.list_namespaces(f"hb{tok}-"):
            links.remove_container_links(ns, "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer containers (< 1 minute)")
    args = ap.parse_args()
    tok = secrets.token_hex(2)
    n_el = 1000
    n_up = 20 if args.quick else 100
    el = bench_elements(n_el, tok)
    rc = rule_counts(tok)
    up = bench_bringup(n_up, tok)
    ratio = el["last_ms"] / el["first_ms"]
    print(f"{'measure':<44} {'value':>12}")
    print(f"{'isolation, container #1 (elements, ms)':<44} {el['first_ms']:>12.3f}")
    print(f"{f'isolation, container #{n_el} (elements, ms)':<44} {el['last_ms']:>12.3f}")
    print(f"{f'ratio #{n_el}/#1 (target <= 1.5)':<44} {ratio:>12.2f}")
    for n, c in rc.items():
        print(f"{f'rules for N={n}':<44} {c:>12}")
    print(f"{f'bring-up of {n_up} full containers (s)':<44} {up['total_s']:>12.2f}")
    print(f"{'  per container, median (ms)':<44} {up['per_container_ms_median']:>12.1f}")
    print(
        f"{'  first / last (ms)':<44} "
        f"{up['per_container_ms_first']:>5.1f} / {up['per_container_ms_last']:.1f}"
    )
    print(f"{f'teardown of {n_up} (s)':<44} {up['teardown_s']:>12.2f}")
    print(
        json.dumps(
            {
                "isolation_first_ms": round(el["first_ms"], 4),
                "isolation_last_ms": round(el["last_ms"], 4),
                "isolation_n": n_el,
                "isolation_ratio": round(ratio, 3),
                "rule_count_by_n": rc,
                "rule_count_constant": len(set(rc.values())) == 1,
                "bringup": {k: round(v, 4) for k, v in up.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
