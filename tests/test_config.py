from __future__ import annotations

from pathlib import Path

import pytest

from enforcer.config import ConfigError, GatewayConfig, HiveConfig, load_config


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
        ("[gateway]\nport = 'x'", "port must be int"),
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
