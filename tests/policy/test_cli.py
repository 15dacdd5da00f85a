"""hive-boundary policy check|test|explain|diff|matrix: output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enforcer.cli import main
from tests.policy.helpers import shipped_texts, texts_with, write_policy


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["policy", *argv])
    return code, capsys.readouterr().out


def test_check_accepts_the_shipped_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "check")
    assert code == 0
    assert "every invariant holds" in out
    code, out = run(capsys, "check", "--json")
    assert code == 0
    assert json.loads(out)["ok"] is True


def test_check_reports_each_problem_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = shipped_texts()["policy.csv"]
    line = len(shipped.splitlines()) + 1  # the appended line
    csv = shipped + "p, role:agent, socket, question:*, question.answer\n"
    write_policy(tmp_path, texts_with({"policy.csv": csv}))
    code, out = run(capsys, "check", str(tmp_path))
    assert code == 1
    assert f"policy.csv:{line}: grants operator-class action question.answer to role:agent" in out
    code, out = run(capsys, "check", str(tmp_path), "--json")
    assert code == 1
    assert json.loads(out)["problems"][0].startswith(f"policy.csv:{line}:")


def test_unreadable_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "check", str(tmp_path / "missing"))
    assert code == 2
    assert "not a policy directory" in out
    with pytest.raises(SystemExit) as e:
        main(["policy", "explain", "operator"])
    assert e.value.code == 2


def test_test_lists_cases_and_fails_on_a_failing_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "test")
    assert code == 0
    cases = shipped_texts()["tests.toml"].count("[[case]]")
    assert f"{cases} passed, 0 failed" in out
    csv = shipped_texts()["policy.csv"].replace(
        "p, role:operator, gateway, approval:*, approval.approve\n", ""
    )
    write_policy(tmp_path, texts_with({"policy.csv": csv}))
    code, out = run(capsys, "test", str(tmp_path))
    assert code == 1
    assert "FAIL    tests.toml:12" in out
    assert f"{cases - 1} passed, 1 failed" in out
    code, out = run(capsys, "test", str(tmp_path), "--json")
    assert code == 1
    assert json.loads(out)["failed"] == 1


def test_explain_allows_with_the_line_and_denies_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run(capsys, "explain", "operator", "gateway", "question:3", "question.answer")
    assert code == 0
    assert out.startswith("ALLOW: allowed by policy.csv:29")
    code, out = run(
        capsys, "explain", "agent:a", "socket", "question:3", "question.answer", "--json"
    )
    data = json.loads(out)
    assert code == 1
    assert data["decision"] == "deny"
    assert data["rule"] is None


def test_diff_exits_1_when_someone_gained_something(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write_policy(tmp_path / "old", shipped_texts())
    csv = shipped_texts()["policy.csv"] + "p, anonymous, gateway, policy, policy.read\n"
    csv = csv.replace("p, role:operator, gateway, audit, audit.read\n", "")
    new = write_policy(tmp_path / "new", texts_with({"policy.csv": csv}))
    code, out = run(capsys, "diff", str(old), str(old))
    assert code == 0
    assert "no subject gained or lost anything" in out
    # anonymous may not hold an operator action: the new version is refused
    code, out = run(capsys, "diff", str(old), str(new))
    assert code == 1
    assert "operator actions are for the operator only" in out
    csv = csv.replace("p, anonymous, gateway, policy, policy.read\n", "")
    write_policy(new, texts_with({"policy.csv": csv}))
    code, out = run(capsys, "diff", str(old), str(new), "--json")
    changes = json.loads(out)["changes"]
    assert code == 1
    assert {"subject": "operator", "change": "lost", "action": "audit.read"}.items() <= changes[
        0
    ].items()


def test_matrix_prints_subjects_by_actions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "matrix")
    assert code == 0
    header = out.splitlines()[0].split()
    assert header[:4] == ["action", "class", "operator", "anonymous"]
    row = next(line.split() for line in out.splitlines() if line.startswith("question.answer"))
    assert row[2] == "G"
    assert row[header.index("agent:*")] == "."
    code, out = run(capsys, "matrix", "--json")
    assert code == 0
    assert "agent:*" in json.loads(out)["cells"]
