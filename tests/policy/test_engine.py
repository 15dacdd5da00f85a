"""PolicyEngine: atomic reload, last good kept, fail closed; decision events."""

from __future__ import annotations

import io
import json
from pathlib import Path

from enforcer.log import configure_logging
from enforcer.policy import AccessRequest, PolicyEngine, decision_event
from tests.policy.helpers import shipped_texts, texts_with, write_policy

ASK = AccessRequest("agent:alpha", "socket", "agent:alpha/questions", "question.ask")
RELOAD = AccessRequest("operator", "gateway", "policy", "policy.reload")


def test_with_no_valid_policy_everything_is_denied(tmp_path: Path) -> None:
    write_policy(tmp_path, texts_with({"policy.csv": "nonsense\n"}))
    engine = PolicyEngine(tmp_path)
    assert engine.current is None
    assert engine.revision == "none"
    d = engine.decide(ASK)
    assert not d.allowed
    assert d.revision == "none"
    assert engine.last_refusal is not None
    assert engine.last_refusal[1].startswith("policy.csv:1: unknown line type 'nonsense'")


def test_an_invalid_version_is_refused_and_the_last_good_stays(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging(stream)
    write_policy(tmp_path, shipped_texts())
    engine = PolicyEngine(tmp_path)
    good = engine.revision
    loaded_at = engine.loaded_at
    assert engine.decide(ASK).allowed
    bad = shipped_texts()["policy.csv"] + "p, role:agent, gateway, policy, policy.reload\n"
    (tmp_path / "policy.csv").write_text(bad)
    result = engine.reload()
    assert not result.ok
    assert result.revision == good
    assert result.error is not None
    assert "agents may hold only agent-self actions" in result.error
    assert engine.revision == good
    assert engine.loaded_at == loaded_at
    assert engine.decide(ASK).allowed
    assert engine.last_refusal is not None
    assert engine.last_refusal[1] == result.error
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    refused = [e for e in events if e["event"] == "policy.refused"]
    assert refused
    assert refused[0]["live_revision"] == good


def test_a_valid_version_replaces_the_live_one(tmp_path: Path) -> None:
    write_policy(tmp_path, shipped_texts())
    engine = PolicyEngine(tmp_path)
    first = engine.revision
    assert engine.decide(RELOAD).allowed
    csv = shipped_texts()["policy.csv"].replace(
        "p, role:operator, gateway, policy, policy.reload\n", ""
    )
    (tmp_path / "policy.csv").write_text(csv)
    # the new version's own tests must agree that reloading is no longer allowed
    cases = shipped_texts()["tests.toml"].split("[[case]]")
    kept = [c for c in cases if 'action = "policy.reload"' not in c]
    (tmp_path / "tests.toml").write_text("[[case]]".join(kept))
    result = engine.reload()
    assert result.ok, result.error
    assert result.changed
    assert result.revision != first
    d = engine.decide(RELOAD)
    assert not d.allowed
    assert d.revision == result.revision
    assert not engine.reload().changed


def test_a_decision_event_has_every_field(tmp_path: Path) -> None:
    write_policy(tmp_path, shipped_texts())
    engine = PolicyEngine(tmp_path)
    d = engine.decide(ASK)
    assert decision_event(ASK, d, "req-1") == {
        "principal": "agent:alpha",
        "channel": "socket",
        "resource": "agent:alpha/questions",
        "action": "question.ask",
        "decision": "allow",
        "rule": "policy.csv:47",
        "revision": engine.revision,
        "request_id": "req-1",
    }
    denied = AccessRequest("agent:alpha", "socket", "question:1", "question.answer")
    ev = decision_event(denied, engine.decide(denied), "req-2")
    assert ev["decision"] == "deny"
    assert ev["rule"] is None


ANSWER_AS_AGENT = AccessRequest("agent:alpha", "socket", "question:1", "question.answer")


def test_a_hot_reload_cannot_reclassify_an_operator_action_for_agents(tmp_path: Path) -> None:
    # The attack: make question.answer "agent-self" in the catalogue and grant it
    # to every agent on the socket. The new version is valid on its own, but
    # going live without a restart would skip the daemons' route checks.
    write_policy(tmp_path, shipped_texts())
    engine = PolicyEngine(tmp_path)
    live = engine.revision
    texts = shipped_texts()
    catalogue = texts["catalogue.toml"]
    entry = catalogue.index('[action."question.answer"]')
    catalogue = (
        catalogue[:entry]
        + catalogue[entry:].replace('class = "operator"', 'class = "agent-self"', 1)
    ).replace('resource = "question:{id}"', 'resource = "agent:{self}/answers/{id}"', 1)
    csv = texts["policy.csv"].replace(
        "p, role:operator, gateway, question:*, question.answer\n",
        "p, role:agent, socket, agent:{self}/answers/*, question.answer\n",
    )
    cases = [c for c in texts["tests.toml"].split("[[case]]") if "question.answer" not in c]
    (tmp_path / "catalogue.toml").write_text(catalogue)
    (tmp_path / "policy.csv").write_text(csv)
    (tmp_path / "tests.toml").write_text("[[case]]".join(cases))
    result = engine.reload()
    assert not result.ok
    assert "question.answer" in (result.error or "")
    assert "changed class from operator to agent-self" in (result.error or "")
    assert engine.revision == live
    assert not engine.decide(
        AccessRequest("agent:alpha", "socket", "agent:alpha/answers/1", "question.answer")
    ).allowed
    assert not engine.decide(ANSWER_AS_AGENT).allowed
    # A fresh start (which re-checks every route) is where such a change belongs.
    fresh = PolicyEngine(tmp_path)
    assert fresh.current is not None


def test_a_hot_reload_cannot_remove_a_live_action(tmp_path: Path) -> None:
    write_policy(tmp_path, shipped_texts())
    engine = PolicyEngine(tmp_path)
    texts = shipped_texts()
    catalogue = texts["catalogue.toml"]
    start = catalogue.index('[action."audit.read"]')
    end = catalogue.index("[action.", start + 5)
    (tmp_path / "catalogue.toml").write_text(catalogue[:start] + catalogue[end:])
    (tmp_path / "policy.csv").write_text(
        texts["policy.csv"].replace("p, role:operator, gateway, audit, audit.read\n", "")
    )
    cases = [c for c in texts["tests.toml"].split("[[case]]") if "audit.read" not in c]
    (tmp_path / "tests.toml").write_text("[[case]]".join(cases))
    result = engine.reload()
    assert not result.ok
    assert "'audit.read' was removed" in (result.error or "")
