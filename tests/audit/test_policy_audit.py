"""The offline audit of a policy directory: what gates a change to policies/."""

from __future__ import annotations

from pathlib import Path

from enforcer.config import default_policy_dir
from tests.audit.helpers import audit, audit_json, check_of, policy_copy, with_line


def test_the_shipped_policy_passes_the_offline_audit() -> None:
    code, report = audit_json("--policy", str(default_policy_dir()))
    assert code == 0
    assert report["ok"] is True
    for check_id in ("policy.valid", "policy.invariants", "policy.tests", "policy.proof"):
        assert check_of(report, check_id)["status"] == "pass", check_id
    # Every allowed agent triple is an agent-self action on its own socket.
    table = report["sections"][0]["tables"][0]
    assert table["rows"], "the proof lists what agents may do"
    assert {(r[1], r[3]) for r in table["rows"]} == {("socket", "own")}


def test_a_grant_of_an_operator_action_to_agents_is_a_finding_naming_the_line(
    tmp_path: Path,
) -> None:
    policy = policy_copy(tmp_path / "p")
    n = with_line(policy, "policy.csv", "p, role:agent, socket, question:*, question.answer")
    code, report = audit_json("--policy", str(policy))
    assert code == 1
    invariants = check_of(report, "policy.invariants")
    assert invariants["status"] == "fail"
    assert any(
        f["where"] == f"policy.csv:{n}" and "question.answer" in f["what"]
        for f in invariants["findings"]
    )
    proof = check_of(report, "policy.proof")
    assert proof["status"] == "fail"
    counterexample = next(f for f in proof["findings"] if f["where"] == f"policy.csv:{n}")
    assert counterexample["detail"]["action"] == "question.answer"
    assert counterexample["detail"]["principal"].startswith("agent:")
    assert counterexample["detail"]["line"] == "p, role:agent, socket, question:*, question.answer"
    assert f"policy.csv:{n}" in report["flagged_lines"]


def test_the_text_report_names_the_offending_line(tmp_path: Path) -> None:
    policy = policy_copy(tmp_path / "p")
    n = with_line(policy, "policy.csv", "p, role:agent, socket, question:*, question.answer")
    code, out, _ = audit("--policy", str(policy))
    assert code == 1
    assert f"policy.csv:{n}:" in out
    assert "FAIL" in out
    assert out.splitlines()[-1].startswith("RESULT: FAIL")


def test_a_grant_on_another_agents_resources_is_proven_wrong(tmp_path: Path) -> None:
    policy = policy_copy(tmp_path / "p")
    n = with_line(policy, "policy.csv", "p, agent:alpha, socket, agent:beta/state/*, state.read")
    code, report = audit_json("--policy", str(policy))
    assert code == 1
    proof = check_of(report, "policy.proof")
    found = [f for f in proof["findings"] if f["where"] == f"policy.csv:{n}"]
    assert found
    assert found[0]["detail"]["resource"].startswith("agent:beta/")


def test_a_failing_expected_case_is_a_finding(tmp_path: Path) -> None:
    policy = policy_copy(tmp_path / "p")
    case = (
        '[[case]]\nprincipal = "operator"\nchannel = "gateway"\n'
        'resource = "policy"\naction = "policy.reload"\nexpect = "deny"'
    )
    with_line(policy, "tests.toml", case)
    code, report = audit_json("--policy", str(policy))
    assert code == 1
    tests = check_of(report, "policy.tests")
    assert tests["status"] == "fail"
    assert tests["findings"][0]["where"].startswith("tests.toml:")


def test_the_shipped_policy_tests_every_catalogue_action() -> None:
    code, report = audit_json("--policy", str(default_policy_dir()))
    assert code == 0
    assert check_of(report, "policy.coverage")["status"] == "pass"


def test_an_untested_operator_action_is_a_finding_unless_lenient(tmp_path: Path) -> None:
    policy = policy_copy(tmp_path / "p")
    cases = (policy / "tests.toml").read_text().split("[[case]]")
    kept = [c for c in cases if 'action = "approval.deny"' not in c]
    assert len(kept) < len(cases)
    (policy / "tests.toml").write_text("[[case]]".join(kept))
    code, report = audit_json("--policy", str(policy))
    coverage = check_of(report, "policy.coverage")
    assert code == 1
    assert coverage["status"] == "fail"
    assert any("approval.deny" in f["what"] for f in coverage["findings"])
    code, report = audit_json("--policy", str(policy), "--lenient-coverage")
    coverage = check_of(report, "policy.coverage")
    assert code == 0
    assert coverage["status"] == "warn"
    assert any("approval.deny" in n for n in coverage["notes"])


def test_a_malformed_policy_is_a_finding_and_the_routes_are_still_judged(tmp_path: Path) -> None:
    policy = policy_copy(tmp_path / "p")
    n = with_line(policy, "policy.csv", "p, role:agent, socket, agent:{self}")
    code, report = audit_json("--policy", str(policy))
    assert code == 1
    valid = check_of(report, "policy.valid")
    assert valid["findings"][0]["where"] == f"policy.csv:{n}"
    assert check_of(report, "policy.proof")["status"] == "skip"
    assert check_of(report, "routes.bound")["status"] == "pass"


def test_an_unreadable_policy_directory_means_the_audit_could_not_run(tmp_path: Path) -> None:
    code, out, err = audit("--policy", str(tmp_path / "missing"))
    assert code == 2
    assert "could not run" in err
    assert "missing" in err
    assert out == ""


def test_the_html_report_is_self_contained_with_the_matrix_grid(tmp_path: Path) -> None:
    policy = policy_copy(tmp_path / "p")
    n = with_line(policy, "policy.csv", "p, role:agent, socket, question:*, question.answer")
    page = tmp_path / "audit.html"
    code, _, _ = audit("--policy", str(policy), "--html", str(page))
    assert code == 1
    text = page.read_text()
    assert text.startswith("<!doctype html>")
    assert 'class="grid"' in text
    assert "question.answer" in text
    assert 'class="bad"' in text, "the flagged line's cells are marked"
    assert f"policy.csv:{n}" in text
    assert "http://" not in text
    assert "https://" not in text
    assert "<script" not in text
