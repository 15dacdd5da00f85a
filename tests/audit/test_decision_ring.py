"""The audit view's decision ring: fair per principal, bounded in all.

One principal's flood only ever pushes out its own older decisions; every
principal keeps its newest ones (at least ``min_per_principal``, up to
``per_principal``), and all rings together never hold more than ``budget``.
"""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from enforcer.corestate import DecisionRing

BUDGET, PER_PRINCIPAL, MIN_PER_PRINCIPAL = 40, 10, 4
MAX_PRINCIPALS = BUDGET // MIN_PER_PRINCIPAL


def _ring() -> DecisionRing:
    return DecisionRing(
        budget=BUDGET, per_principal=PER_PRINCIPAL, min_per_principal=MIN_PER_PRINCIPAL
    )


@st.composite
def floods(draw: st.DrawFn, principals: int) -> list[str]:
    """Requests of up to ``principals`` principals, some in long runs (floods)."""
    runs = draw(
        st.lists(
            st.tuples(st.integers(0, principals - 1), st.integers(1, 60)), min_size=1, max_size=30
        )
    )
    return [f"agent:p{who}" for who, length in runs for _ in range(length)]


def _play(ring: DecisionRing, principals: list[str]) -> list[tuple[str, str]]:
    events: dict[str, Any] = {}
    made = []
    for i, principal in enumerate(principals):
        event = events.setdefault(principal, MappingProxyType({"principal": principal}))
        ring.append((event, f"r{i:06d}"))
        made.append((principal, f"r{i:06d}"))
    return made


@given(floods(principals=2 * MAX_PRINCIPALS))
def test_the_ring_never_holds_more_than_its_budget_and_keeps_each_principals_newest(
    principals: list[str],
) -> None:
    ring = _ring()
    made = _play(ring, principals)
    kept = ring.all()
    assert len(kept) == len(ring) <= BUDGET
    assert len({d["principal"] for d in kept}) <= MAX_PRINCIPALS
    # Oldest first, in the order the decisions were made.
    assert [d["request_id"] for d in kept] == sorted(d["request_id"] for d in kept)
    for principal in {d["principal"] for d in kept}:
        own = [rid for who, rid in made if who == principal]
        mine = [d["request_id"] for d in kept if d["principal"] == principal]
        assert mine == own[-len(mine) :]  # its newest, none skipped


@given(floods(principals=MAX_PRINCIPALS))
def test_no_principal_is_flooded_out_by_another(principals: list[str]) -> None:
    ring = _ring()
    made = _play(ring, principals)
    made_by = Counter(who for who, _ in made)
    kept_by = Counter(d["principal"] for d in ring.all())
    for principal, count in made_by.items():
        # Never fewer than min_per_principal, whatever the others sent.
        assert kept_by[principal] >= min(count, MIN_PER_PRINCIPAL)
        assert kept_by[principal] >= min(count, ring.per_principal)


@given(floods(principals=3), st.integers(1, 50))
def test_newest_is_the_tail_of_everything_kept(principals: list[str], limit: int) -> None:
    ring = _ring()
    _play(ring, principals)
    assert ring.newest(limit) == ring.all()[-limit:]
    for principal in set(principals):
        own = [d for d in ring.all() if d["principal"] == principal]
        assert ring.newest(limit, principal=principal) == own[-limit:]
    assert ring.newest(limit, principal="agent:*") == ring.all()[-limit:]
    assert ring.newest(limit, principal="operator") == []


def test_a_flood_of_one_principal_leaves_the_others_whole() -> None:
    ring = DecisionRing()  # the core's: 1000 per principal while few are active
    _play(ring, ["operator"] * 5 + ["agent:beta"] * 3 + ["agent:alpha"] * 100_000)
    kept = Counter(d["principal"] for d in ring.all())
    assert kept == {"operator": 5, "agent:beta": 3, "agent:alpha": 1000}


@given(
    st.lists(st.integers(0, 2 * MAX_PRINCIPALS - 1), min_size=2 * MAX_PRINCIPALS, max_size=120).map(
        lambda who: [f"agent:p{w}" for w in who]
    )
)
def test_past_the_most_principals_the_least_recently_active_goes(principals: list[str]) -> None:
    ring = _ring()
    _play(ring, principals)
    last_active = {who: i for i, who in enumerate(principals)}
    most_recent = sorted(last_active, key=last_active.__getitem__)[-MAX_PRINCIPALS:]
    assert {d["principal"] for d in ring.all()} == set(most_recent)
