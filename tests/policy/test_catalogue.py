"""catalogue.toml: every action has a known class, a resource and a description."""

from __future__ import annotations

from enforcer.policy.catalogue import parse_catalogue
from enforcer.policy.types import AuthorityClass
from tests.policy.helpers import shipped_texts


def test_the_shipped_catalogue_parses_with_every_class() -> None:
    cat, lines, problems = parse_catalogue(shipped_texts()["catalogue.toml"])
    assert problems == []
    assert cat["question.answer"].authority is AuthorityClass.OPERATOR
    assert cat["state.write"].authority is AuthorityClass.AGENT_SELF
    assert lines["approval.approve"] == 11


def test_an_unknown_class_is_refused_naming_the_line() -> None:
    text = '# c\n[action."x.y"]\nclass = "admin"\nresource = "r"\ndescription = "d"\n'
    _, _, problems = parse_catalogue(text)
    assert problems == [
        "catalogue.toml:2: action 'x.y': unknown class 'admin' "
        "(one of operator, agent-self, public, system)"
    ]


def test_missing_and_unknown_keys_and_bad_names_are_refused() -> None:
    text = (
        '[action."a.b"]\nclass = "operator"\nresource = "r"\n'
        '[action."Bad Name"]\nclass = "operator"\nresource = "r"\ndescription = "d"\n'
        '[action."c"]\nclass = "operator"\nresource = "r"\ndescription = "d"\ncolour = 1\n'
    )
    _, _, problems = parse_catalogue(text)
    assert "catalogue.toml:1: action 'a.b': missing key(s) description" in problems
    assert any(p.startswith("catalogue.toml:4: action 'Bad Name': malformed") for p in problems)
    assert "catalogue.toml:8: action 'c': unknown key(s) colour" in problems


def test_invalid_toml_is_refused() -> None:
    _, _, problems = parse_catalogue("[action.\n")
    assert problems[0].startswith("catalogue.toml: invalid TOML")
