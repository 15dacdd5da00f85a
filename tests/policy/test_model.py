"""model.conf: exactly the canonical model, anything else refused naming the line."""

from __future__ import annotations

from enforcer.policy.model import MODEL_TEXT, model_problems
from tests.policy.helpers import shipped_texts


def test_the_shipped_model_and_the_canonical_text_are_accepted() -> None:
    assert model_problems(shipped_texts()["model.conf"]) == []
    assert model_problems(MODEL_TEXT) == []


def test_a_deny_effect_is_refused_naming_its_line() -> None:
    text = MODEL_TEXT.replace(
        "some(where (p.eft == allow))",
        "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
    )
    (problem,) = model_problems(text)
    assert problem.startswith("model.conf:11: [policy_effect] e =")


def test_an_unknown_section_or_key_is_refused() -> None:
    problems = model_problems(MODEL_TEXT + "[extra]\nx = 1\n")
    assert any(p.startswith("model.conf:16: unknown section [extra]") for p in problems)
    problems = model_problems(MODEL_TEXT.replace("g = _, _", "g = _, _\ng2 = _, _"))
    assert any("unknown key 'g2'" in p and p.startswith("model.conf:9:") for p in problems)


def test_a_missing_section_and_a_changed_matcher_are_refused() -> None:
    text = MODEL_TEXT.replace("[role_definition]\ng = _, _\n", "").replace(
        "r.chan == p.chan && ", ""
    )
    problems = model_problems(text)
    assert any("missing [role_definition]" in p for p in problems)
    assert any(p.startswith("model.conf:") and "[matchers] m" in p for p in problems)


def test_whitespace_and_comments_do_not_matter() -> None:
    text = "# a comment\n" + MODEL_TEXT.replace(" && ", "&&").replace("= ", "=   ")
    assert model_problems(text) == []
