"""Operator token file, session store, CSRF tokens and the same-origin rule."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from enforcer.sessions import (
    SessionStore,
    TokenFileError,
    cookie_name,
    load_or_create_token,
    origin_allowed,
    tokens_equal,
)

ORIGIN = "http://127.0.0.1:8080"


def test_token_file_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    old = os.umask(0)  # even a careless umask must not loosen it
    try:
        token = load_or_create_token(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40
    assert load_or_create_token(path) == token


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    load_or_create_token(path)
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="readable by others"):
        load_or_create_token(path)


def test_a_token_file_another_account_made_is_refused_not_adopted(tmp_path: Path) -> None:
    # In STATE (root:hive-core 1775) the core's uid could plant the token it
    # wants the operator to use; found by an attack review.
    from tests.conftest import require_root

    require_root()
    path = tmp_path / "operator-token"
    path.write_text("a-token-the-core-knows-0123456789\n")
    path.chmod(0o600)
    os.chown(path, 64123, 64123)  # an unused uid standing for the core's
    with pytest.raises(TokenFileError, match="belongs to uid 64123"):
        load_or_create_token(path)


def test_a_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    load_or_create_token(real)
    link = tmp_path / "operator-token"
    link.symlink_to(real)
    with pytest.raises(TokenFileError):
        load_or_create_token(link)


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "operator-token"
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match="empty"):
        load_or_create_token(path)


def test_tokens_compare_exactly() -> None:
    assert tokens_equal("abc", "abc")
    assert not tokens_equal("abc", "abd")
    assert not tokens_equal("abc", "abcd")
    assert not tokens_equal("", "abc")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_its_expiry_and_not_after() -> None:
    clock = FakeClock()
    store = SessionStore(60, clock=clock)
    sid, session = store.create()
    assert store.get(sid) == session
    clock.now += 59.9
    assert store.get(sid) == session
    clock.now += 0.2
    assert store.get(sid) is None


def test_logout_revokes_only_that_session() -> None:
    store = SessionStore(60)
    a, _ = store.create()
    b, _ = store.create()
    store.revoke(a)
    assert store.get(a) is None
    assert store.get(b) is not None


def test_unknown_and_absurd_session_ids_find_nothing() -> None:
    store = SessionStore(60)
    store.create()
    for sid in (None, "", "x", "a" * 10_000):
        assert store.get(sid) is None


def test_a_cookie_verifies_only_under_the_key_that_made_it() -> None:
    one, two = SessionStore(60), SessionStore(60)
    sid, session = one.create()
    assert one.get(sid) == session
    assert two.get(sid) is None
    assert SessionStore(60, key=b"k" * 32).get(SessionStore(60, key=b"k" * 32).create()[0])


def test_the_csrf_token_is_bound_to_its_session() -> None:
    store = SessionStore(60)
    _, one = store.create()
    _, two = store.create()
    assert one.csrf_ok(one.csrf_token)
    assert not one.csrf_ok(two.csrf_token)
    assert not one.csrf_ok(None)
    assert not one.csrf_ok("")


def test_the_secure_cookie_name_is_host_prefixed() -> None:
    assert cookie_name(True).startswith("__Host-")
    assert not cookie_name(False).startswith("__Host-")


@pytest.mark.parametrize(
    ("origin", "fetch_site", "allowed"),
    [
        (ORIGIN, None, True),
        (ORIGIN, "same-origin", True),
        (None, "same-origin", True),
        (None, None, False),
        ("null", None, False),
        ("null", "same-origin", False),
        ("http://127.0.0.1:8081", None, False),
        ("https://127.0.0.1:8080", None, False),
        ("http://evil.example", "same-origin", False),
        (ORIGIN, "cross-site", False),
        (ORIGIN, "same-site", False),
        (None, "none", False),
        (None, "cross-site", False),
    ],
)
def test_only_the_gateways_own_origin_may_change_state(
    origin: str | None, fetch_site: str | None, allowed: bool
) -> None:
    assert origin_allowed(origin, fetch_site, ORIGIN) is allowed
