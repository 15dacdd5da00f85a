"""Loading a policy directory: unreadable input, revisions, expected cases, network."""

from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.policy import PolicyError, PolicyUnreadable, load_policy
from enforcer.policy.loader import build_policy
from tests.policy.helpers import SHIPPED, shipped_texts, texts_with, write_policy


def test_the_shipped_policy_loads_and_passes_its_cases() -> None:
    policy = load_policy(SHIPPED)
    assert len(policy.tests) == shipped_texts()["tests.toml"].count("[[case]]")
    assert all(r.passed for r in policy.run_tests())
    assert policy.network.agent_ui_port == 8000
    assert policy.catalogue["question.answer"].resource == "question:{id}"


def test_a_missing_directory_or_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PolicyUnreadable, match="not a policy directory"):
        load_policy(tmp_path / "nope")
    texts = shipped_texts()
    del texts["tests.toml"]
    write_policy(tmp_path, texts)
    with pytest.raises(PolicyUnreadable, match=r"tests\.toml: missing"):
        load_policy(tmp_path)


def test_the_revision_is_a_hash_of_every_file() -> None:
    base = build_policy(shipped_texts()).revision
    assert base == build_policy(shipped_texts()).revision
    for name in ("policy.csv", "catalogue.toml", "network.toml", "tests.toml", "model.conf"):
        changed = texts_with({name: shipped_texts()[name] + "\n# edited\n"})
        assert build_policy(changed).revision != base, name


def test_a_failing_expected_case_refuses_the_version_naming_the_case() -> None:
    texts = shipped_texts()
    csv = texts["policy.csv"].replace(
        "p, role:agent, socket, agent:{self}/questions, question.ask\n", ""
    )
    with pytest.raises(PolicyError) as e:
        build_policy(texts_with({"policy.csv": csv}))
    (problem,) = e.value.problems
    assert problem.startswith("tests.toml:42: expected allow, got deny for (agent:alpha, socket")


def test_case_file_problems_name_the_case() -> None:
    bad = '[[case]]\nprincipal = "operator"\nchannel = "gateway"\nresource = "x"\n'
    bad += 'action = "policy.read"\nexpect = "maybe"\n\n[[case]]\nprincipal = "operator"\n'
    with pytest.raises(PolicyError) as e:
        build_policy(texts_with({"tests.toml": bad}))
    assert e.value.problems[0] == "tests.toml:1: expect must be 'allow' or 'deny', got 'maybe'"
    assert e.value.problems[1].startswith("tests.toml:8: missing key(s) action, channel")


def test_a_network_rule_for_an_unknown_role_is_refused() -> None:
    net = shipped_texts()["network.toml"].replace('"role:agent"', '"role:agnet"')
    with pytest.raises(PolicyError, match=r"\[\[egress\]\] #1: role:agnet is not a role"):
        build_policy(texts_with({"network.toml": net}))


def test_a_bad_network_section_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"network\.toml: top level: unknown key"):
        build_policy(texts_with({"network.toml": "colour = 1\n"}))


def test_problems_from_every_file_are_reported_in_file_order() -> None:
    texts = texts_with(
        {
            "model.conf": shipped_texts()["model.conf"] + "[extra]\n",
            "policy.csv": "p9, x\n",
        }
    )
    with pytest.raises(PolicyError) as e:
        build_policy(texts)
    files = [p.split(":")[0] for p in e.value.problems]
    assert files == ["model.conf", "policy.csv", "network.toml"]
