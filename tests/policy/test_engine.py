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
