"""The pure parts of the web UI (no browser): view models, the policy grid, the probe
heat-map, and the core-side guards of the page routes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.strategies import DrawFn, composite

from enforcer.config import HiveConfig
from enforcer.corestate import CORE
from enforcer.policy import AuthorityClass, load_policy
from enforcer.policy.syntax import AGENT_PATTERN, is_principal
from tests.core.conftest import Core, make_config, start_core
from webui import network_view, policy_view, views

SHIPPED = load_policy(Path(__file__).resolve().parents[2] / "policies")


# --- the policy grid -----------------------------------------------------------------


def test_every_principal_cell_shows_what_the_engine_decides_for_its_example() -> None:
    grid = policy_view.policy_grid(SHIPPED)
    checked = 0
    for row in grid.rows:
        for col, shown in zip(grid.columns, row.allowed, strict=True):
            if not (is_principal(col.subject) or col.subject == AGENT_PATTERN):
                continue
            example = policy_view.example_request(SHIPPED, col.subject, row.action)
            assert example is not None
            assert SHIPPED.decide(example).allowed == shown, (col.subject, row.action)
            checked += 1
    assert checked >= len(grid.rows) * 4


def test_no_agent_column_is_granted_an_operator_class_action() -> None:
    grid = policy_view.policy_grid(SHIPPED)
    agent_cols = [
        i for i, c in enumerate(grid.columns) if c.kind == "agents" or c.subject == "role:agent"
    ]
    op_rows = [r for r in grid.rows if r.operator_class]
    assert op_rows
    assert all(r.authority == AuthorityClass.OPERATOR.value for r in op_rows)
    assert not any(r.allowed[i] for r in op_rows for i in agent_cols)
    # Operator-class rows come first: the page groups them at the top.
    assert [r.operator_class for r in grid.rows] == sorted(
        (r.operator_class for r in grid.rows), reverse=True
    )


def test_an_explanation_names_the_granting_line_or_why_nothing_does() -> None:
    granted = policy_view.explain_cell(SHIPPED, "operator", "container.restart")
    assert granted is not None
    assert granted.allowed
    assert granted.example_allowed
    assert any("container.restart" in a.rule.text for a in granted.lines)
    denied = policy_view.explain_cell(SHIPPED, AGENT_PATTERN, "container.restart")
    assert denied is not None
    assert not denied.allowed
    assert denied.example_allowed is False
    assert denied.lines == ()
    role = policy_view.explain_cell(SHIPPED, "role:agent", "state.write")
    assert role is not None
    assert role.example is None
    assert role.allowed
    assert policy_view.explain_cell(SHIPPED, "operator", "no.such.action") is None
    assert policy_view.explain_cell(SHIPPED, "role:nobody", "state.read") is None


# --- the probe heat-map -----------------------------------------------------------------

_OUTCOMES = st.sampled_from(["open", "refused", "timeout", "unreachable", "error:113"])


@composite
def probe_cells(draw: DrawFn) -> list[dict[str, Any]]:
    """Probe cells over a few sources and targets (duplicates allowed: last one wins)."""
    sources = st.sampled_from(["host", "alpha", "beta"])
    targets = st.sampled_from(["host:lo4", "ui:alpha4", "ui:beta6", "outside:443"])
    return draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "source": sources,
                    "target": targets,
                    "address": st.just("10.0.0.1"),
                    "port": st.integers(1, 65535),
                    "expected": st.booleans(),
                    "outcome": _OUTCOMES,
                }
            ),
            min_size=1,
            max_size=20,
        )
    )


@given(cells=probe_cells())
def test_heat_map_counts_exactly_the_cells_that_disagree_with_the_policy(
    cells: list[dict[str, Any]],
) -> None:
    view = network_view.parse_probe({"at": 1.0, "probe": {"cells": cells}})
    assert view.available
    assert view.mismatches == sum((c["outcome"] == "open") != c["expected"] for c in cells)
    shown = [h for row in view.cells for h in row if h is not None]
    assert len(shown) == len({(c["source"], c["target"]) for c in cells})
    assert all(h.css == "mismatch" for h in shown if not h.ok)


@given(data=st.recursive(st.none() | st.booleans() | st.integers() | st.text(), lambda kids:
       st.lists(kids) | st.dictionaries(st.text(), kids)))  # fmt: skip
def test_any_json_gives_a_view_or_says_why_not(data: Any) -> None:
    view = network_view.parse_probe(data)
    assert view.available or view.problem


def test_no_probe_file_says_so(tmp_path: Path) -> None:
    view = network_view.load_probe(tmp_path)
    assert not view.available
    assert "no probe has been run" in view.problem
    (tmp_path / network_view.PROBE_FILE).write_text("{not json")
    assert "not valid JSON" in network_view.load_probe(tmp_path).problem


# --- small view helpers ---------------------------------------------------------------------


@given(st.text(max_size=80))
def test_redirect_targets_stay_on_operator_pages(value: str) -> None:
    target = views.safe_next(value, "/")
    assert target.startswith("/")
    assert not target.startswith("//")
    assert not target.startswith(("/agent/", "/api"))
    assert "\\" not in target
    assert "\n" not in target


def test_redirect_targets_examples() -> None:
    assert views.safe_next("/agents/alpha", "/") == "/agents/alpha"
    for bad in ("//evil.example/", "https://evil.example/", "/agent/alpha/", "/\\evil", None, 3):
        assert views.safe_next(bad, "/x") == "/x"


def test_decision_filters_newest_first_with_prefixes() -> None:
    events = [
        {"principal": "agent:a", "action": "question.ask", "decision": "allow"},
        {"principal": "operator", "action": "container.stop", "decision": "allow"},
        {"principal": "anonymous", "action": "agent.list", "decision": "deny"},
        {"principal": "agent:b", "action": "state.read", "decision": "allow"},
    ]
    got = views.filter_decisions(events, views.DecisionFilter(principal="agent:*"))
    assert [e["principal"] for e in got] == ["agent:b", "agent:a"]
    assert views.filter_decisions(events, views.DecisionFilter(decision="deny")) == [events[2]]
    assert len(views.filter_decisions(events, views.DecisionFilter(), limit=2)) == 2


def test_display_status_words() -> None:
    assert views.display_status("running", "") == "running"
    assert views.display_status("stopped", "") == "stopped"
    assert views.display_status("absent", "") == "stopped"
    assert views.display_status("stopped", "Failed") == "failed"
    assert views.display_status("failed", "") == "failed"
    assert views.display_status("unknown", "") == "unknown"
    assert views.display_status("unknown", "crashed") == "failed"


# --- the page routes on the core, without the gateway ---------------------------------------


@pytest.fixture
async def core(hive_dirs: tuple[Path, Path]) -> AsyncIterator[Core]:
    """A real core with agent alpha and one open question."""
    config: HiveConfig = make_config(*hive_dirs)
    c = await start_core(config)
    try:
        await c.register("alpha")
        async with c.agent("alpha") as ag:
            resp = await ag.post("/v1/questions", json={"text": "ok?"})
            assert resp.status == 201
        yield c
    finally:
        await c.runner.cleanup()


async def test_pages_need_the_operator_marker(core: Core) -> None:
    async with core.operator(headers={}) as anonymous:
        for path in ("/", "/questions", "/agents/alpha", "/policy", "/audit"):
            resp = await anonymous.get(path)
            assert resp.status == 403, path
        assert (await anonymous.get("/static/hive.css")).status == 200


async def test_a_form_without_the_sessions_csrf_token_changes_nothing(core: Core) -> None:
    before = core.app[CORE].db.snapshot()
    headers = {"X-Hive-Principal": "operator", "X-Hive-CSRF-Token": "the-real-one"}
    async with core.operator(headers=headers) as op:
        for form in ({"answer": "x"}, {"answer": "x", "csrf_token": "guess"}):
            resp = await op.post("/questions/1/answer", data=form)
            assert resp.status == 403
            assert (await resp.json())["reason"] == "missing or wrong CSRF token"
        resp = await op.post("/questions/1/answer", json={"answer": "x"})
        assert resp.status == 400
        resp = await op.post("/agents/alpha/destroy", data={"csrf_token": "the-real-one"})
        assert resp.status == 400  # destroy without its confirmation step
    assert core.app[CORE].db.snapshot() == before
    async with core.operator(headers=headers) as op:
        resp = await op.post(
            "/questions/1/answer",
            data={"answer": "yes", "csrf_token": "the-real-one", "next": "//evil.example/"},
            allow_redirects=False,
        )
        assert resp.status == 303
        assert resp.headers["Location"] == "/questions?notice=answered"
    assert core.app[CORE].db.question(1).answer == "yes"


async def test_bad_page_parameters_are_clear_4xx(core: Core) -> None:
    async with core.operator() as op:
        for path in (
            "/agents/nobody",
            "/policy?subject=operator&action=nope",
            "/audit?decision=maybe",
            "/audit?limit=0",
            "/audit?limit=%C2%B2",  # "²": str.isdigit() says yes, int() refused it (a 500)
            "/audit?limit=" + "9" * 5000,
        ):
            resp = await op.get(path)
            assert 400 <= resp.status < 500, path
            assert "reason" in json.loads(await resp.text())


def test_resource_use_reads_an_agents_group_as_words() -> None:
    use = views.resource_use(
        {
            "memory_bytes": 12 << 20,
            "memory_max_bytes": 1 << 30,
            "tasks": 3,
            "tasks_max": 512,
            "cpu_max": 0.5,
            "oom_kills": 2,
        }
    )
    assert use == views.ResourceUse("12.0 MiB of 1.0 GiB", "3 of 512", "at most 0.5 CPU", 2)
    unbounded = views.resource_use({"memory_max_bytes": None, "cpu_max": None, "tasks_max": None})
    assert unbounded == views.ResourceUse(
        "unknown (unbounded)", "unknown (unbounded)", "unbounded", 0
    )
    assert views.resource_use(None) is None  # a backend that bounds nothing: no line at all
    assert views.format_bytes(1000) == "1000 B"
    assert views.format_bytes(3 << 40) == "3072.0 GiB"


@given(
    st.dictionaries(
        st.sampled_from(
            ["memory_bytes", "memory_max_bytes", "tasks", "tasks_max", "cpu_max", "oom_kills"]
        ),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.none())
        ),
    )
)
def test_property_any_resources_answer_renders_without_error_or_echo(
    resources: dict[str, object],
) -> None:
    # hive-priv's answer passes through the core to the page: whatever it holds,
    # the view is words and numbers, never an echoed object.
    use = views.resource_use(resources)
    if use is not None:
        for text in (use.memory, use.tasks, use.cpu):
            assert "[" not in text
            assert "'" not in text
        assert isinstance(use.oom_kills, int)
