from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from enforcer.config import (
    ConfigError,
    CoreConfig,
    GatewayConfig,
    HiveConfig,
    load_config,
    parse_listen,
)


def test_missing_default_config_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIVE_CONFIG", raising=False)
    monkeypatch.setattr("enforcer.config.DEFAULT_CONFIG_PATH", Path("/nonexistent/hive.toml"))
    assert load_config().run_dir == HiveConfig().run_dir


def test_config_file_is_parsed_once_into_frozen_dataclass(tmp_path: Path) -> None:
    f = tmp_path / "hive.toml"
    f.write_text('run_dir = "/tmp/x"\n[gateway]\nlisten = "127.0.0.1:9999"\n')
    cfg = load_config(f)
    assert cfg.run_dir == Path("/tmp/x")
    assert cfg.gateway.port == 9999
    assert cfg.gateway.origin == "http://127.0.0.1:9999"
    with pytest.raises(AttributeError):
        cfg.run_dir = Path("/")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("run_dir = [", "invalid TOML"),
        ("bogus = 1", "unknown key(s) bogus"),
        ("[gateway]\nport = 'x'", "port must be an integer"),
        ("[gateway]\nworkers = true", "workers must be an integer, got bool"),
        ("[gateway]\nidle_timeout = 0", "idle_timeout must be a number of seconds from 0.001"),
        ("[gateway]\nlisten = '127.0.0.1:99999'", "port must be an integer from 1 to 65535"),
        ("[gateway]\nsession_ttl_seconds = -5", "session_ttl_seconds must be an integer from 1"),
        ("[gateway]\ntls_cert = 5", "tls_cert must be an absolute path"),
        ("[gateway]\nuser = ''", "user must be a non-empty string"),
        ("[core]\nmax_body_bytes = -1", "max_body_bytes must be an integer from 1"),
        ("[core]\nmax_state_entries_per_agent = 0", "must be an integer from 1"),
        ("[core]\ngateway_uid = 'root'", "gateway_uid must be an integer, got str"),
        ("[core]\nlong_poll_max_seconds = 1e9", "long_poll_max_seconds must be a number"),
        ("run_dir = 'relative/run'", "run_dir must be an absolute path"),
        ("state_dir = 7", "state_dir must be an absolute path"),
        ("[gateway]\nlisten = 'nope'", "listen must be HOST:PORT"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "hive.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(f)


def test_explicit_missing_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("host", "port", "tls", "origin"),
    [
        ("127.0.0.1", 8080, False, "http://127.0.0.1:8080"),
        ("127.0.0.1", 80, False, "http://127.0.0.1"),
        ("hive.example", 443, True, "https://hive.example"),
        ("hive.example", 8443, True, "https://hive.example:8443"),
        ("::1", 8080, False, "http://[::1]:8080"),
    ],
)
def test_the_origin_is_written_as_a_browser_sends_it(
    host: str, port: int, tls: bool, origin: str
) -> None:
    # Found by an attack review: ::1, or a default port, gave an origin no
    # browser sends, and every login was refused.
    cert = {"tls_cert": Path("/c.pem"), "tls_key": Path("/k.pem")} if tls else {}
    assert GatewayConfig(host=host, port=port, **cert).origin == origin  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings",
    [{"tls_cert": Path("/c.pem")}, {"tls_key": Path("/k.pem")}, {"port": 0}, {"port": 70000}],
)
def test_a_gateway_setting_that_cannot_work_is_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        GatewayConfig(**settings)  # type: ignore[arg-type]


def test_a_whole_number_is_accepted_where_seconds_are_asked(tmp_path: Path) -> None:
    f = tmp_path / "hive.toml"
    f.write_text("[gateway]\nidle_timeout = 5\n[core]\nlong_poll_max_seconds = 2\n")
    cfg = load_config(f)
    assert cfg.gateway.idle_timeout == 5.0
    assert isinstance(cfg.gateway.idle_timeout, float)
    assert cfg.core.long_poll_max_seconds == 2.0


def test_a_relative_directory_from_the_environment_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "hive.toml"
    f.write_text("")
    monkeypatch.setenv("HIVE_STATE_DIR", "state")
    with pytest.raises(ConfigError, match=r"\$HIVE_STATE_DIR: state_dir must be an absolute path"):
        load_config(f)


_KEYS = [
    ("", "run_dir"),
    ("", "state_dir"),
    ("", "policy_dir"),
    *(("core", key) for key in CoreConfig.__dataclass_fields__),
    *(("gateway", key) for key in GatewayConfig.__dataclass_fields__),
    ("gateway", "listen"),
]

_TOML_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(), max_size=2),
)


@given(st.lists(st.tuples(st.sampled_from(_KEYS), _TOML_VALUES), max_size=4))
def test_any_value_for_any_key_is_accepted_in_range_or_refused_clearly(
    settings: list[tuple[tuple[str, str], object]],
) -> None:
    # Property: whatever a configuration file holds, loading it either gives a
    # config whose every setting is of its type and in its range, or a
    # ConfigError naming the file - never another exception (a traceback).
    tables: dict[str, dict[str, object]] = {"": {}, "core": {}, "gateway": {}}
    for (table, key), value in settings:
        tables[table][key] = value
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "hive.toml"
        f.write_text(_toml(tables))
        try:
            cfg = load_config(f)
        except ConfigError as e:
            refused: ConfigError | None = e
        else:
            refused = None
    if refused is not None:
        assert refused.reason.startswith(str(f))
        return
    for section in (cfg.core, cfg.gateway):
        for key, field in section.__dataclass_fields__.items():
            value = getattr(section, key)
            kind = str(field.type).removesuffix(" | None")
            if value is None:
                assert str(field.type).endswith("| None")
            elif kind in {"int", "float"}:
                assert not isinstance(value, bool)
                assert isinstance(value, int | float)
            elif kind == "Path":
                assert isinstance(value, Path)
                assert value.is_absolute()
            else:
                assert isinstance(value, str)
                assert value
    assert cfg.run_dir.is_absolute()
    assert cfg.state_dir.is_absolute()


def _toml(tables: dict[str, dict[str, object]]) -> str:
    lines = [f"{key} = {_value(v)}" for key, v in tables[""].items()]
    for name in ("core", "gateway"):
        lines.append(f"[{name}]")
        lines += [f"{key} = {_value(v)}" for key, v in tables[name].items()]
    return "\n".join(lines) + "\n"


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in {float("inf"), float("-inf")}:
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string is JSON-compatible for these
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"


@pytest.mark.parametrize(
    "text",
    [
        '[gateway]\nlisten = "127.0.0.1:\u00b2"\n',  # "²".isdigit() is True; int("²") raises
        '[gateway]\nlisten = "127.0.0.1:' + "1" * 5000 + '"\n',  # past int()'s digit limit
        "[core]\nmax_body_bytes = " + "1" * 5000 + "\n",  # tomllib's ValueError
        "a = " + "[" * 5000 + "]" * 5000 + "\n",  # tomllib's RecursionError
        '[gateway]\nlisten = "::1:80"\n',  # IPv6 without brackets
        '[gateway]\nlisten = "[::1]]:80"\n',
    ],
    ids=["superscript-port", "huge-port", "huge-int", "deep-array", "bare-ipv6", "stray-bracket"],
)
def test_bad_toml_found_by_the_attack_review_is_a_config_error(tmp_path: Path, text: str) -> None:
    f = tmp_path / "hive.toml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=str(f)):
        load_config(f)


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8443", ("::1", 8443)), ("h:1", ("h", 1))],
)
def test_listen_is_host_and_port(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


def test_the_command_lines_listen_is_checked_alike(tmp_path: Path) -> None:
    from enforcer.gateway import _config_from_args

    empty = tmp_path / "hive.toml"
    empty.write_text("")
    args = argparse.Namespace(config=empty, listen="127.0.0.1:\u00b2", workers=None)
    with pytest.raises(ConfigError, match="--listen must be HOST:PORT"):
        _config_from_args(args)


def test_a_host_with_more_than_64_cpus_still_loads_a_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the attack review: the per-CPU default (96 here) failed its own
    # range check (1-64), so every config was refused on such a host.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    f = tmp_path / "hive.toml"
    f.write_text("")
    assert load_config(f).gateway.workers == 64
    f.write_text("[gateway]\nworkers = 2\n")
    assert load_config(f).gateway.workers == 2
