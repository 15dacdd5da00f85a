"""Decision cost: the compiled index vs ``casbin.Enforcer`` vs ``casbin.FastEnforcer``.

Generated policies for N agents (10 ``p`` lines each, on their own resources,
plus the shipped operator, public, system and ``role:agent`` lines). Prints a
table and, as the last line, one JSON object with every figure.

Targets: compiled median <= 1 us per decision and flat in N
(N=5000 / N=10 <= 1.5); compiling the index at N=5000 <= 1 s.

    .venv/bin/python -m bench.decision [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable, Sequence

from enforcer.config import default_policy_dir
from enforcer.policy import AccessRequest
from enforcer.policy.index import CompiledIndex
from enforcer.policy.loader import POLICY_FILES, build_policy
from enforcer.policy.reference import CasbinReference

SIZES = (10, 100, 1000, 5000)
PER_AGENT = (
    ("agent:{a}", "agent.whoami"),
    ("agent:{a}/questions", "question.ask"),
    ("agent:{a}/questions/*", "question.wait"),
    ("agent:{a}/approvals", "approval.request"),
    ("agent:{a}/approvals/*", "approval.wait"),
    ("agent:{a}/messages", "message.send"),
    ("agent:{a}/status", "status.report"),
    ("agent:{a}/state/*", "state.read"),
    ("agent:{a}/state/*", "state.write"),
    ("agent:{a}/state/*", "state.list"),
)


def policy_texts(n: int) -> dict[str, str]:
    """The shipped policy with n agents, each granted 10 lines of its own."""
    base = default_policy_dir()
    texts = {name: (base / name).read_text() for name in POLICY_FILES}
    lines = [texts["policy.csv"]]
    for i in range(n):
        a = f"a{i}"
        lines += [f"p, agent:{a}, socket, {obj.format(a=a)}, {act}" for obj, act in PER_AGENT]
    texts["policy.csv"] = "\n".join(lines) + "\n"
    return texts


def requests_for(n: int, count: int, rng: random.Random) -> list[AccessRequest]:
    """A mix of allowed and denied requests from named agents, unnamed agents and the operator."""
    out = []
    for _ in range(count):
        i, j = rng.randrange(n), rng.randrange(n)
        kind = rng.randrange(5)
        if kind == 0:
            out.append(AccessRequest(f"agent:a{i}", "socket", f"agent:a{i}/state/x", "state.read"))
        elif kind == 1:
            out.append(AccessRequest(f"agent:a{i}", "socket", f"agent:a{j}x/state/x", "state.read"))
        elif kind == 2:
            out.append(AccessRequest(f"agent:a{i}", "socket", "question:1", "question.answer"))
        elif kind == 3:
            out.append(
                AccessRequest("operator", "gateway", f"agent:a{j}/container", "container.stop")
            )
        else:
            out.append(
                AccessRequest(f"agent:u{i}", "socket", f"agent:u{i}/status", "status.report")
            )
    return out


def per_decision_ns(
    decide: Callable[[AccessRequest], object], reqs: Sequence[AccessRequest], batch: int
) -> float:
    """Median over batches of the mean time of one decision, in nanoseconds."""
    samples = []
    for start in range(0, len(reqs) - batch + 1, batch):
        chunk = reqs[start : start + batch]
        t0 = time.perf_counter_ns()
        for r in chunk:
            decide(r)
        samples.append((time.perf_counter_ns() - t0) / batch)
    return statistics.median(samples)


def run(quick: bool) -> dict[str, object]:
    rng = random.Random(2)
    rows: list[dict[str, float | int]] = []
    for n in SIZES:
        texts = policy_texts(n)
        t0 = time.perf_counter()
        policy = build_policy(texts)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        index = CompiledIndex(policy.lines, policy.roles, policy.catalogue, policy.revision)
        compile_s = time.perf_counter() - t0
        reqs = requests_for(n, 20_000 if quick else 100_000, rng)
        for r in reqs:
            index.decide(r)  # steady state: agents first seen at run time are cached
        compiled = per_decision_ns(index.decide, reqs, 100)
        # the same requests, one principal at a time: what locality buys
        local = sorted(reqs[:20_000], key=lambda r: r.principal)
        compiled_local = per_decision_ns(index.decide, local, 100)
        # Casbin agrees (spot check) before being timed
        fast = CasbinReference(policy.lines, policy.roles, fast=True)
        plain = CasbinReference(policy.lines, policy.roles)
        for r in reqs[:20]:
            assert fast.enforce(r) == index.decide(r).allowed == plain.enforce(r)
        # pycasbin builds a role for every p-line subject on its first decision
        # (O(N^2) pattern matching with `agent:*`): time that once, apart.
        deny = AccessRequest("agent:a0", "socket", "question:1", "question.answer")
        t0 = time.perf_counter_ns()
        plain.enforce(deny)
        first_plain_ns = time.perf_counter_ns() - t0
        fast.enforce(deny)
        fast_n = 40 if n >= 1000 else 400
        fast_ns = per_decision_ns(
            fast.enforce, reqs[:fast_n] if not quick else reqs[: fast_n // 2], 1
        )
        # plain Enforcer scans every line for a deny: few samples at large N
        plain_n = {10: 400, 100: 200, 1000: 40, 5000: 16}[n]
        if quick:
            plain_n //= 2
        plain_ns = per_decision_ns(plain.enforce, reqs[:plain_n], 1)
        # a deny scans every line; an allow stops at the first match
        denies = [r for r in reqs[: plain_n * 3] if not index.decide(r).allowed][: plain_n // 2]
        plain_deny_ns = per_decision_ns(plain.enforce, denies, 1)
        rows.append(
            {
                "n": n,
                "lines": len(policy.lines),
                "load_s": round(load_s, 4),
                "compile_s": round(compile_s, 4),
                "compiled_ns": round(compiled, 1),
                "compiled_sorted_by_principal_ns": round(compiled_local, 1),
                "enforcer_deny_ns": round(plain_deny_ns, 1),
                "fast_enforcer_ns": round(fast_ns, 1),
                "enforcer_ns": round(plain_ns, 1),
                "fast_over_compiled": round(fast_ns / compiled, 1),
                "enforcer_over_compiled": round(plain_ns / compiled, 1),
                "enforcer_samples": plain_n,
                "enforcer_first_decision_ms": round(first_plain_ns / 1e6, 1),
            }
        )
    flat = rows[-1]["compiled_ns"] / rows[0]["compiled_ns"]
    return {
        "bench": "decision",
        "quick": quick,
        "rows": rows,
        "compiled_flatness_5000_over_10": round(flat, 2),
        "targets": {
            "compiled_le_1us": all(r["compiled_ns"] <= 1000 for r in rows),
            "flat_le_1_5": flat <= 1.5,
            "compile_5000_le_1s": rows[-1]["compile_s"] <= 1.0,
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (< 1 minute)")
    args = parser.parse_args(argv)
    result = run(args.quick)
    rows = result["rows"]
    assert isinstance(rows, list)
    head = f"{'N':>5} {'lines':>6} {'compile':>9} {'load':>8} {'compiled':>10} "
    head += f"{'(sorted)':>9} {'FastEnforcer':>13} {'Enforcer':>11} {'Enf deny':>11} "
    head += f"{'Fast/ours':>10} {'Enf/ours':>9}"
    print(head)
    for r in rows:
        print(
            f"{r['n']:>5} {r['lines']:>6} {r['compile_s'] * 1000:>7.1f}ms {r['load_s']:>7.2f}s "
            f"{r['compiled_ns']:>8.0f}ns {r['compiled_sorted_by_principal_ns']:>7.0f}ns "
            f"{r['fast_enforcer_ns'] / 1000:>11.1f}us {r['enforcer_ns'] / 1e6:>9.2f}ms "
            f"{r['enforcer_deny_ns'] / 1e6:>9.2f}ms {r['fast_over_compiled']:>9.0f}x "
            f"{r['enforcer_over_compiled']:>8.0f}x"
        )
    print(
        f"compiled N=5000 / N=10: {result['compiled_flatness_5000_over_10']}; targets: "
        f"{result['targets']}"
    )
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
